"""Benchmark 1: test accuracy after N minutes of training on this machine's CPU, profile against profile.

    python bench/cpu_time_to_accuracy.py ARCHIVE [--minutes 15] [--record BENCHMARKS.md]
    python bench/cpu_time_to_accuracy.py ARCHIVE --variant sgd cpu train.optimizer=sgd ... --variant cpu cpu
    python bench/cpu_time_to_accuracy.py --dry-run          # tiny synthetic run, seconds

Each profile (default: `cpu`, then `seed`) gets the same training time: its schedule is compressed
into the optimizer steps that fit (from timed steps; the last epoch may be partial), trained with the pipeline's `fit` on CIFAR-10's
training set, and scored on test_batch without and with TTA; 6-view TTA inference of the test set
is timed too. Training time is the epoch loops' sum (validation passes excluded) and is reported
as measured, whether under or (slightly) over the budget. `--variant LABEL PROFILE KEY=VALUE...`
(repeatable, instead of --profiles) runs a profile with overrides under its own label: two
recipes side by side in one run, on the machine as it is then.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

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
REPORTED_POLICIES = ("none", "flip", "flip_translate")
TTA_FRACTIONS = (0.5, 0.25)  # flip_translate on the least-confident half and quarter only


def markdown_section(minutes: float, results: dict[str, dict], source: str) -> str:
    first = next(iter(results.values()))
    rows = [
        ("machine", first["machine"]),
        ("torch", first["torch"]),
        ("date", first["date"]),
        ("data", f"{source} ({first['train_images']} training images, test_batch as the test set)"),
        ("budget", f"{minutes:g} minutes of training per profile"),
    ]
    for name, result in results.items():
        accuracy = result["test_accuracy"]
        rows += [
            (f"`{name}`: recipe", result["recipe"]),
            (f"`{name}`: model", f"{result['model']} {result['model_config']['widths'] if result['model'] == 'airnet' else ''}, "
                                 f"{result['model_params']:,} trainable parameters"),
            (f"`{name}`: epochs", f"{result['epochs_run']} of the profile's {result['planned_epochs']} "
                                  f"(batch {result['train_params']['batch_size']})"),
            (f"`{name}`: training time", f"{result['training_seconds']:.0f} s "
                                         f"({result['train_images_per_second']:.0f} images/s)"),
            (f"`{name}`: test accuracy", f"{accuracy['raw_none']:.2%} plain, {accuracy['raw_flip']:.2%} flip, "
                                         f"**{accuracy['raw_flip_translate']:.2%}** flip + translate (6 views)"),
            (f"`{name}`: 6-view TTA inference, {result['test_images']:,} images",
             f"{result['tta_seconds']['flip_translate']:.1f} s"),
            *((f"`{name}`: 6-view TTA on the least-confident {fraction:.0%} only",
               f"{accuracy[f'raw_flip_translate@{fraction:g}']:.2%} in "
               f"{result['tta_seconds'][f'flip_translate@{fraction:g}']:.1f} s")
              for fraction in TTA_FRACTIONS),
        ]  # fmt: skip
    title = f"### {minutes:g} minutes of CPU training — {first['machine']}"
    return f"{title}\n\n{markdown_table(rows)}"


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data, 3 s budget")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per profile")
    parser.add_argument("--profiles", nargs="+", default=["cpu", "seed"])
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar="LABEL PROFILE KEY=VALUE",
        help="a labelled profile with overrides; repeat it to compare recipes (replaces --profiles)",
    )  # fmt: skip
    args = parse_bench_arguments(parser, argv)
    minutes = 0.05 if args.dry_run else args.minutes
    variants = [(name, name, []) for name in args.profiles]
    if args.variant:
        if any(len(variant) < 2 for variant in args.variant):
            parser.error("--variant needs a LABEL and a PROFILE, then any KEY=VALUE overrides")
        variants = [(label, profile, overrides) for label, profile, *overrides in args.variant]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        prepared_dir = prepare_data(
            args.workdir or Path(scratch), None if args.dry_run else args.archive
        )
        for name, profile, overrides in variants:
            model_params, params = profile_params(profile, overrides)
            if args.dry_run:
                model_params, params = tiny(model_params, params)
            params = dataclasses.replace(params, device="cpu")
            console.print(f"{name} ({profile} {' '.join(overrides)}): {minutes:g} min of training")
            results[name] = train_and_score(
                prepared_dir, model_params, params, minutes * 60, console.print,
                REPORTED_POLICIES, TTA_FRACTIONS,
            )  # fmt: skip
            results[name]["recipe"] = " ".join([f"profile {profile}", *overrides])
            if args.json:  # after every profile: a crash later keeps what was measured
                args.json.write_text(json.dumps(results, indent=2))

    table = Table(title=f"{minutes:g} min of CPU training")
    for column in (
        "profile",
        "params",
        "epochs",
        "train s",
        "plain",
        "flip",
        "flip+translate",
        "6-view TTA s",
    ):
        table.add_column(column)
    for name, result in results.items():
        accuracy = result["test_accuracy"]
        table.add_row(
            name, f"{result['model_params']:,}", f"{result['epochs_run']}/{result['planned_epochs']}",
            f"{result['training_seconds']:.0f}", f"{accuracy['raw_none']:.4f}", f"{accuracy['raw_flip']:.4f}",
            f"{accuracy['raw_flip_translate']:.4f}", f"{result['tta_seconds']['flip_translate']:.1f}",
        )  # fmt: skip
    console.print(table)
    if args.record:
        source = "synthetic (dry run)" if args.dry_run else args.archive.name
        with args.record.open("a") as handle:
            handle.write("\n" + markdown_section(minutes, results, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
