"""What the benchmarks share: the machine's description, real or synthetic data through the
pipeline's own fetch and prepare, and one scored training run (optionally fitted to a time budget).

Every figure comes from a run; nothing is estimated except the number of epochs that fit a time
budget, which is derived from timed steps and reported next to the measured training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config.load import parse_overrides, recipe
from pipeline.config.params import (
    DataParams,
    PrepareParams,
    SyntheticParams,
    TrainParams,
)
from pipeline.data.formats import write_custom_test
from pipeline.engine.device import choose_precision
from pipeline.engine.loop import EpochStats, fit
from pipeline.engine.models import count_trainable_params
from pipeline.engine.schedule import steps_per_epoch, total_steps
from pipeline.engine.timing import fit_to_budget, planned_seconds_per_step
from pipeline.engine.tta import TTA_POLICIES, predict_logits
from pipeline.models.registry import ModelConfig, is_residual
from pipeline.stages import (
    fetch,
    prepare,
)
from pipeline.stages.train import configure_device, setup_training


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


def run_facts(device: torch.device) -> dict:
    return {
        "machine": machine_description(device),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def prepare_data(workdir: Path, archive: Path | None) -> Path:
    """fetch + prepare into workdir (reused if already prepared); None: tiny synthetic data."""
    raw_dir, prepared_dir = workdir / "data/raw", workdir / "data/prepared"
    if (prepared_dir / "dataset.json").exists():
        return prepared_dir
    if archive is None:
        data = DataParams(
            source="synthetic",
            synthetic=SyntheticParams(train_images=500, val_images=200, custom_test_images=20),
        )
    else:  # the custom test set is not needed for these figures; a stand-in satisfies prepare
        stand_in = workdir / "cifar_test_nolabel.pkl"
        write_custom_test(stand_in, np.zeros((10, 32, 32, 3), np.uint8), np.arange(10))
        data = DataParams(source="local", path=str(archive), custom_test_path=str(stand_in))
    fetch.run(data, raw_dir)
    prepare.run(PrepareParams(), raw_dir, prepared_dir, workdir / "metrics/data.json")
    return prepared_dir


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's state (names, dtypes, shapes and bytes, in order): equal digests
    are bit-identical weights, as two deterministic runs should give."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def train_budgeted(
    prepared_dir: Path,
    model_params: ModelConfig,
    params: TrainParams,
    budget_seconds: float | None = None,
    log=print,
) -> tuple[dict[str, torch.nn.Module], tuple[torch.Tensor, torch.Tensor], dict]:
    """One training run → its trained weights ({"raw": …, "ema": …} when it keeps an EMA), the
    test set (on the training device), and its figures: training seconds (sum of the epoch
    loops, no validation), images/s, epochs run."""
    setup = setup_training(model_params, params, prepared_dir, configure_device(params))
    model, device, train_set, val_set = setup.model, setup.device, setup.train_set, setup.val_set
    normalization = (setup.info["mean"], setup.info["std"])
    planned_epochs, step_seconds, sides = params.epochs, None, None
    epoch_steps = steps_per_epoch(train_set[1].shape[0], params)
    if budget_seconds is not None:
        step_seconds, sides = planned_seconds_per_step(model, params, train_set, normalization)
        params = fit_to_budget(params, epoch_steps, max(1, int(budget_seconds / step_seconds)))
        per_side = ", ".join(f"{side} px {seconds:.3f} s" for side, seconds in sides.items())
        log(
            f"budget {budget_seconds:.0f} s: {step_seconds:.3f} s/step ({per_side}) → "
            f"{total_steps(epoch_steps, params)} steps ({params.epochs} epochs, the profile has "
            f"{planned_epochs})"
        )
    epochs: list[EpochStats] = []

    def on_epoch(stats: EpochStats, _ema: torch.nn.Module | None) -> None:
        epochs.append(stats)
        log(
            f"epoch {stats.epoch:3d}  {stats.seconds:7.2f} s  loss {stats.train_loss:.3f}  "
            f"val {stats.val_accuracy:.4f}"
        )

    started = time.perf_counter()
    ema_model = fit(model, params, train_set, val_set, normalization, on_epoch)
    wall_seconds = time.perf_counter() - started
    trained = {"raw": model} | ({"ema": ema_model} if ema_model is not None else {})
    return (
        trained,
        val_set,
        run_facts(device)
        | {
            "model": model_params.name,
            "model_config": dataclasses.asdict(model_params),
            "residual": is_residual(model_params),
            "model_params": count_trainable_params(model),
            "train_images": int(train_set[1].shape[0]),
            "test_images": int(val_set[1].shape[0]),
            "planned_epochs": planned_epochs,
            "epochs": params.epochs,
            "epochs_run": round(total_steps(epoch_steps, params) / epoch_steps, 2),
            "budget_seconds": budget_seconds,
            "calibrated_seconds_per_step": step_seconds,
            "calibrated_seconds_per_step_by_side": sides,
            "training_seconds": sum(e.seconds for e in epochs),
            "wall_seconds_with_validation": wall_seconds,
            "median_epoch_seconds": statistics.median(e.seconds for e in epochs),
            "train_images_per_second": statistics.median(e.images_per_second for e in epochs),
            "train_params": dataclasses.asdict(params),
            "weights_sha256": weights_digest(model),
            "per_epoch": [dataclasses.asdict(e) for e in epochs],
        },
    )


def logits_per_policy(
    model: torch.nn.Module,
    test_set: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    policies: tuple[str, ...] = TTA_POLICIES,
    tta_fractions: tuple[float, ...] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The model's test-set logits under each TTA policy, and the seconds each pass took; then
    flip_translate given only to each `tta_fractions` share of the least-confident images
    (keys like `flip_translate@0.25`)."""
    passes = [(policy, policy, 1.0) for policy in policies] + [
        (f"flip_translate@{fraction:g}", "flip_translate", fraction) for fraction in tta_fractions
    ]
    logits, seconds = {}, {}
    for key, policy, fraction in passes:
        if test_set[0].device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        precision = choose_precision(
            test_set[0].device, params.mixed_precision, params.autocast_dtype
        )
        logits[key] = predict_logits(
            model, test_set[0], policy, params.eval_batch_size, precision, fraction
        )
        logits[key].argmax(1).cpu()  # waits for the device
        seconds[key] = time.perf_counter() - started
    return logits, seconds


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def train_and_score(
    prepared_dir: Path,
    model_params: ModelConfig,
    params: TrainParams,
    budget_seconds: float | None = None,
    log=print,
    policies: tuple[str, ...] = TTA_POLICIES,
    tta_fractions: tuple[float, ...] = (),
) -> dict:
    """One training run → its figures (`train_budgeted`'s) plus test accuracy under each TTA
    policy (raw and EMA weights; `tta_fractions` as in `logits_per_policy`) and the time of
    each pass (raw weights)."""
    trained, test_set, figures = train_budgeted(
        prepared_dir, model_params, params, budget_seconds, log
    )
    accuracy, tta_seconds = {}, {}
    for weights, net in trained.items():
        logits, seconds = logits_per_policy(net, test_set, params, policies, tta_fractions)
        for policy, policy_logits in logits.items():
            accuracy[f"{weights}_{policy}"] = accuracy_of(policy_logits, test_set[1])
        if weights == "raw":
            tta_seconds = seconds
    return figures | {"test_accuracy": accuracy, "tta_seconds": tta_seconds}


def read_csv_labels(path: Path) -> np.ndarray:
    """A submission CSV's labels, in its row order (the custom test's id order)."""
    rows = path.read_text().strip().splitlines()[1:]
    return np.array([int(row.split(",")[1]) for row in rows])


def markdown_table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def profile_params(name: str, overrides: list[str]) -> tuple[ModelConfig, TrainParams]:
    """A profile's model and train params with `section.key=value` overrides (YAML values)."""
    params = recipe(name, parse_overrides(overrides))
    return params.model, params.train


def tiny(model_params: ModelConfig, params: TrainParams) -> tuple[ModelConfig, TrainParams]:
    """Dry-run sizes: the same kind of model and recipe, shrunk to seconds on a CPU."""
    reads = {field.name for field in dataclasses.fields(model_params)}
    stages = len(getattr(model_params, "blocks", [1, 1, 1]))
    shrunk = {"base_width": 8, "blocks": [1] * stages, "widths": [8, 16, 16][:stages]}
    model_params = dataclasses.replace(
        model_params, **{key: value for key, value in shrunk.items() if key in reads}
    )
    milestones = {"milestones": [1]} if params.schedule == "multistep" else {}
    params = dataclasses.replace(
        params, device="cpu", compile="never", epochs=2, batch_size=100, checkpoint_every=2,
        eval_batch_size=100, **milestones,
    )  # fmt: skip
    return model_params, params


def bench_arguments(description: str, dry_run_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: the archive, --workdir, --record, --json, --dry-run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("archive", nargs="?", type=Path, help="real cifar-10-python.tar.gz")
    parser.add_argument("--workdir", type=Path, help="keep prepared data here (reused if present)")
    parser.add_argument("--record", type=Path, help="append the figures to this Markdown file")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    return parser


def parse_bench_arguments(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.archive is None and not args.dry_run:
        parser.error("give the CIFAR-10 archive, or --dry-run")
    return args
