"""Benchmark 3: training profiles on a GPU, through the pipeline's own stages, on real CIFAR-10.

    python bench/gpu_profiles.py ARCHIVE --profile fast --runs 5 --record BENCHMARKS.md
    python bench/gpu_profiles.py ARCHIVE --profile default --budget-seconds 300
    python bench/gpu_profiles.py ARCHIVE --profile seed --set train.epochs=40
    python bench/gpu_profiles.py --dry-run --profile fast   # tiny synthetic run on the CPU

Each run: fetch (local archive) → prepare → `fit` with the profile's params (seed + run index)
→ test accuracy (CIFAR-10's test_batch) under every TTA policy, raw and EMA weights. Training
seconds are the epoch loops' time, without validation passes and after torch.compile's warm-up
(the budget probe or the first run compiles). `--budget-seconds` compresses the profile's
schedule into the epochs that fit. Prints a table; --record appends a section to BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import (
    bench_arguments,
    markdown_table,
    parse_bench_arguments,
    prepare_data,
    profile_params,
    tiny,
    train_and_score,
)
from rich.console import Console
from rich.table import Table

console = Console()


def summary(runs: list[dict]) -> dict:
    policy_keys = runs[0]["test_accuracy"].keys()
    return {
        "runs": len(runs),
        "mean": {
            key: statistics.mean(r["test_accuracy"][key] for r in runs) for key in policy_keys
        },
        "min": {key: min(r["test_accuracy"][key] for r in runs) for key in policy_keys},
        "median_training_seconds": statistics.median(r["training_seconds"] for r in runs),
        "median_epoch_seconds": statistics.median(r["median_epoch_seconds"] for r in runs),
        "distinct_weights": len({r["weights_sha256"] for r in runs}),
    }


def markdown_section(profile: str, overrides: list[str], runs: list[dict], source: str) -> str:
    first, totals = runs[0], summary(runs)
    accuracy_rows = [
        (
            f"test accuracy, {key.replace('_', ' weights, TTA ', 1)}",
            f"mean {totals['mean'][key]:.2%}, min {totals['min'][key]:.2%}",
        )
        for key in totals["mean"]
    ]
    epochs = f"{first['epochs_run']}" + (
        f" (profile: {first['planned_epochs']}, compressed to fit {first['budget_seconds']:.0f} s)"
        if first["epochs_run"] != first["planned_epochs"]
        else ""
    )
    rows = [
        ("machine", first["machine"]),
        ("torch", first["torch"]),
        ("date", first["date"]),
        ("data", f"{source} ({first['train_images']} training images, test_batch as the test set)"),
        ("profile", profile + (f", overrides: {' '.join(overrides)}" if overrides else "")),
        ("model", f"{first['model']}, {first['model_params']:,} trainable parameters"
                  f"{', residual' if first['residual'] else ', not residual'}"),
        ("epochs", epochs),
        ("runs (seeds)", f"{len(runs)} (seeds {', '.join(str(r['train_params']['seed']) for r in runs)})"),
        ("distinct final weights (sha256)", f"{totals['distinct_weights']} of {len(runs)} runs"),
        ("median training time", f"{totals['median_training_seconds']:.2f} s "
                                 f"(median epoch {totals['median_epoch_seconds']:.3f} s)"),
        *accuracy_rows,
        (f"6-view TTA inference, {first['test_images']:,} images", f"{first['tta_seconds']['flip_translate']:.2f} s"),
    ]  # fmt: skip
    changed = f" with {' '.join(overrides)}" if overrides else ""
    title = f"### Profile `{profile}`{changed} × {len(runs)} — {first['machine'].split(' (')[0]}"
    return f"{title}\n\n{markdown_table(rows)}"


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data on the CPU")
    parser.add_argument("--profile", default="fast", help="fast | default | seed | cpu")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--runs", type=int, default=1, help="seeds seed, seed+1, ...")
    parser.add_argument(
        "--same-seed", action="store_true",
        help="every run with the profile's seed: with train.deterministic, their weights' digests "
        "must match (the reproduce story)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-runs", type=int, default=0, help="untimed runs first (torch.compile, autotuning)"
    )
    parser.add_argument("--budget-seconds", type=float, help="fit the schedule into this time")
    args = parse_bench_arguments(parser, argv)
    model_params, params = profile_params(args.profile, args.set)
    if args.dry_run:
        model_params, params = tiny(model_params, params)
    elif params.device != "cpu" and not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark is for GPUs (--dry-run checks it on CPU)")

    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        prepared_dir = prepare_data(workdir, None if args.dry_run else args.archive)
        for index in range(args.warmup_runs):  # same shapes and seeds as run 1; figures dropped
            console.print(f"warm-up run {index + 1}/{args.warmup_runs} (not counted)")
            train_and_score(prepared_dir, model_params, params, args.budget_seconds, console.print)
        runs = []
        for index in range(args.runs):
            run_params = dataclasses.replace(
                params, seed=params.seed + (0 if args.same_seed else index)
            )
            result = train_and_score(
                prepared_dir, model_params, run_params, args.budget_seconds, console.print
            )
            console.print(
                f"run {index + 1}/{args.runs}: {result['training_seconds']:.2f} s, "
                f"accuracy {json.dumps({k: round(v, 4) for k, v in result['test_accuracy'].items()})}"
            )
            runs.append(result)
            if args.json:  # after every run: a crash later keeps what was measured
                args.json.write_text(json.dumps({"summary": summary(runs), "runs": runs}, indent=2))

    table = Table(title=f"profile {args.profile} × {len(runs)}")
    table.add_column("figure")
    table.add_column("mean")
    table.add_column("min")
    totals = summary(runs)
    for key in totals["mean"]:
        table.add_row(
            f"test accuracy {key}", f"{totals['mean'][key]:.4f}", f"{totals['min'][key]:.4f}"
        )
    table.add_row("median training seconds", f"{totals['median_training_seconds']:.2f}", "")
    console.print(table)
    if args.record:
        source = "synthetic (dry run)" if args.dry_run else args.archive.name
        with args.record.open("a") as handle:
            handle.write("\n" + markdown_section(args.profile, args.set, runs, source))
    if args.same_seed and params.deterministic and totals["distinct_weights"] > 1:
        console.print(
            f"[red]not reproducible: {totals['distinct_weights']} distinct final weights from "
            f"{len(runs)} runs with one seed and train.deterministic on"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
