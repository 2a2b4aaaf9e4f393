"""Benchmark: the seed team's recipe through the pipeline's own stages, on real CIFAR-10.

    python bench/seed_recipe.py PATH/cifar-10-python.tar.gz [--epochs 200] [--record BENCHMARKS.md]
    python bench/seed_recipe.py --dry-run          # tiny synthetic run on CPU, checks the script works

Runs fetch (local archive) → prepare → the train stage's `fit` (seed_resnet, SGD 0.09, momentum
0.9, weight decay 3e-4, batch 128, crop 4 + flip; MultiStepLR at 45% and 90% of the epochs, as the
seed's [90, 180] of 200) → test accuracy without and with flip TTA. Prints a table and, with
--record, appends the figures with the machine, torch version and date to a Markdown file.
The custom test set is not needed for these figures; a random stand-in satisfies prepare.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import fetch, prepare  # noqa: E402
from pipeline.config import DataParams, ModelParams, PrepareParams, SyntheticParams, TrainParams  # noqa: E402
from pipeline.formats import write_custom_test  # noqa: E402
from pipeline.models import count_trainable_params  # noqa: E402
from pipeline.train import EpochStats, fit, setup_training  # noqa: E402
from pipeline.tta import evaluate, predict_logits  # noqa: E402

console = Console()


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = f"{names[0]} ×{len(names)} threads" if names else cpu
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host CPU: {cpu})"
    return f"CPU only: {cpu}, torch threads {torch.get_num_threads()}"


def prepare_data(workdir: Path, archive: Path | None) -> Path:
    raw_dir, prepared_dir = workdir / "data/raw", workdir / "data/prepared"
    if archive is None:
        data = DataParams(
            source="synthetic",
            synthetic=SyntheticParams(train_images=500, val_images=200, custom_test_images=20),
        )
    else:
        stand_in = workdir / "cifar_test_nolabel.pkl"
        write_custom_test(stand_in, np.zeros((10, 32, 32, 3), np.uint8), np.arange(10))
        data = DataParams(source="local", path=str(archive), custom_test_path=str(stand_in))
    fetch.run(data, raw_dir)
    prepare.run(PrepareParams(), raw_dir, prepared_dir, workdir / "metrics/data.json")
    return prepared_dir


def run_benchmark(prepared_dir: Path, model_params: ModelParams, params: TrainParams) -> dict:
    setup = setup_training(model_params, params, prepared_dir)
    model, device, train_set, val_set = setup.model, setup.device, setup.train_set, setup.val_set
    epochs: list[EpochStats] = []

    def on_epoch(stats: EpochStats) -> None:
        epochs.append(stats)
        console.print(
            f"epoch {stats.epoch:3d}  {stats.seconds:6.2f} s  loss {stats.train_loss:.3f}  val {stats.val_accuracy:.4f}"
        )

    started = time.perf_counter()
    fit(model, params, train_set, val_set, on_epoch)
    wall_seconds = time.perf_counter() - started
    mixed = params.mixed_precision
    plain_accuracy, _ = evaluate(model, *val_set, "none", params.eval_batch_size, mixed)
    flip_accuracy, _ = evaluate(model, *val_set, "flip", params.eval_batch_size, mixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tta_started = time.perf_counter()
    predict_logits(model, val_set[0], "flip", params.eval_batch_size, mixed).cpu()
    tta_seconds = time.perf_counter() - tta_started
    return {
        "machine": machine_description(device),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "model": model_params.name,
        "model_params": count_trainable_params(model),
        "train_images": int(train_set[1].shape[0]),
        "epochs": params.epochs,
        "milestones": params.milestones,
        "training_seconds": sum(e.seconds for e in epochs),
        "wall_seconds_with_validation": wall_seconds,
        "median_epoch_seconds": statistics.median(e.seconds for e in epochs),
        "train_images_per_second": statistics.median(e.images_per_second for e in epochs),
        "test_accuracy": plain_accuracy,
        "test_accuracy_flip_tta": flip_accuracy,
        "flip_tta_inference_images_per_second": val_set[1].shape[0] / tta_seconds,
        "per_epoch": [dataclasses.asdict(e) for e in epochs],
    }


def markdown_section(result: dict, archive: str) -> str:
    rows = [
        ("machine", result["machine"]),
        ("torch", result["torch"]),
        ("date", result["date"]),
        (
            "data",
            f"{archive} ({result['train_images']} training images, test_batch as the test set)",
        ),
        ("model", f"{result['model']}, {result['model_params']:,} trainable parameters"),
        (
            "recipe",
            f"seed recipe, {result['epochs']} epochs, lr ×0.1 at epochs {result['milestones']}",
        ),
        ("training time (sum of epoch loops)", f"{result['training_seconds']:.1f} s"),
        ("wall time incl. per-epoch validation", f"{result['wall_seconds_with_validation']:.1f} s"),
        (
            "median epoch",
            f"{result['median_epoch_seconds']:.2f} s ({result['train_images_per_second']:,.0f} images/s)",
        ),
        ("test accuracy, no TTA", f"{result['test_accuracy']:.2%}"),
        ("test accuracy, flip TTA", f"{result['test_accuracy_flip_tta']:.2%}"),
        ("flip-TTA inference", f"{result['flip_tta_inference_images_per_second']:,.0f} images/s"),
    ]
    lines = [
        f"### Seed recipe, {result['epochs']} epochs — {result['machine'].split(' (')[0]}",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "archive", nargs="?", type=Path, help="real cifar-10-python.tar.gz (official layout)"
    )
    parser.add_argument("--epochs", type=int, default=200, help="seed: 200")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--record", type=Path, help="append the figures to this Markdown file")
    parser.add_argument(
        "--json", type=Path, help="write all figures, per epoch too, to this JSON file"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny synthetic data, tiny model, CPU"
    )
    args = parser.parse_args(argv)
    if args.archive is None and not args.dry_run:
        parser.error("give the CIFAR-10 archive, or --dry-run")

    model_params = ModelParams()
    milestones = [round(0.45 * args.epochs), round(0.9 * args.epochs)]
    params = TrainParams(
        device=args.device, epochs=args.epochs, milestones=milestones, checkpoint_every=args.epochs
    )
    if args.dry_run:
        model_params = ModelParams(base_width=8, blocks=[1, 1, 1])
        params = dataclasses.replace(params, device="cpu", epochs=2, milestones=[1], batch_size=100)

    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        prepared_dir = prepare_data(Path(workdir), None if args.dry_run else args.archive)
        result = run_benchmark(prepared_dir, model_params, params)

    table = Table(title="seed recipe benchmark")
    table.add_column("figure")
    table.add_column("value")
    for key, value in result.items():
        if key != "per_epoch":
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    source = "synthetic (dry run)" if args.dry_run else args.archive.name
    if args.record:
        with args.record.open("a") as handle:
            handle.write("\n" + markdown_section(result, source))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
