"""Benchmark 2: training and TTA-inference throughput of each profile's model on this machine's CPU.

    python bench/cpu_throughput.py ARCHIVE [--record BENCHMARKS.md]
    python bench/cpu_throughput.py --dry-run          # tiny synthetic run, seconds

Training: median time of full steps (augmentation, forward, backward, optimizer) at the
profile's batch size on real training images → images/s. Inference: the test set's first
`--test-images` images through `predict_logits` with TTA none and flip_translate (6 views)
→ images/s (images, not views). Also `resnet_wide` (WRN-16-4) with the default recipe.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from common import (
    bench_arguments,
    markdown_table,
    parse_bench_arguments,
    prepare_data,
    profile_params,
    run_facts,
    tiny,
)
from rich.console import Console
from rich.table import Table

from pipeline.engine.models import count_trainable_params
from pipeline.engine.timing import seconds_per_step
from pipeline.engine.tta import predict_logits
from pipeline.stages.train import configure_device, setup_training

console = Console()
MODELS = {  # label: (profile, overrides)
    "seed (seed_resnet)": ("seed", []),
    "fast (airnet 64/256/256)": ("fast", []),
    "cpu (airnet 32/128/128)": ("cpu", []),
    "default (airnet residual 128/304/304)": ("default", []),
    "resnet_wide WRN-16-4": (
        "default",
        [
            "model.name=resnet_wide",
            "model.widths=[64,128,256]",
            "model.blocks=[2,2,2]",
            "model.dropout=0.17",
        ],  # fmt: skip
    ),
}


def measure(
    prepared_dir: Path,
    label: str,
    profile: str,
    overrides: list[str],
    dry_run: bool,
    test_images: int,
) -> dict:
    model_params, params = profile_params(profile, overrides)
    if dry_run:
        model_params, params = tiny(model_params, params)
    params = dataclasses.replace(params, device="cpu", augment_policy="none")
    setup = setup_training(model_params, params, prepared_dir, configure_device(params))
    normalization = (setup.info["mean"], setup.info["std"])
    step_seconds = seconds_per_step(setup.model, params, setup.train_set, normalization)
    images = setup.val_set[0][:test_images]
    inference = {}
    for policy in ("none", "flip_translate"):
        predict_logits(setup.model, images[:50], policy, params.eval_batch_size)  # warm-up
        started = time.perf_counter()
        predict_logits(setup.model, images, policy, params.eval_batch_size)
        inference[policy] = images.shape[0] / (time.perf_counter() - started)
    result = {
        "label": label, "model_params": count_trainable_params(setup.model),
        "batch_size": params.batch_size, "train_images_per_second": params.batch_size / step_seconds,
        "inference_images_per_second": inference,
    }  # fmt: skip
    console.print(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data and models")
    parser.add_argument("--test-images", type=int, default=2000)
    args = parse_bench_arguments(parser, argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        prepared_dir = prepare_data(
            args.workdir or Path(scratch), None if args.dry_run else args.archive
        )
        results = [
            measure(prepared_dir, label, profile, overrides, args.dry_run, args.test_images)
            for label, (profile, overrides) in MODELS.items()
        ]
    facts = run_facts(__import__("torch").device("cpu"))
    if args.json:
        args.json.write_text(json.dumps(facts | {"models": results}, indent=2))
    table = Table(title="CPU throughput")
    for column in ("model", "params", "batch", "train img/s", "infer img/s", "6-view TTA img/s"):
        table.add_column(column)
    rows = []
    for r in results:
        cells = (
            r["label"], f"{r['model_params']:,}", str(r["batch_size"]), f"{r['train_images_per_second']:.0f}",
            f"{r['inference_images_per_second']['none']:.0f}",
            f"{r['inference_images_per_second']['flip_translate']:.0f}",
        )  # fmt: skip
        table.add_row(*cells)
        rows.append(cells)
    console.print(table)
    if args.record:
        header = "| model | trainable params | batch | training images/s | inference images/s | 6-view TTA images/s |"
        lines = [
            header,
            "| --- | --- | --- | --- | --- | --- |",
            *("| " + " | ".join(c) + " |" for c in rows),
        ]
        facts_table = markdown_table([(k, v) for k, v in facts.items()])
        with args.record.open("a") as handle:
            handle.write(
                f"\n### CPU throughput — {facts['machine']}\n\n{facts_table}\n"
                + "\n".join(lines)
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
