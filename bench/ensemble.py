"""Benchmark 4: a seed ensemble within the 5M budget against its members, on CIFAR-10's test set.

    python bench/ensemble.py ARCHIVE --profile cpu --members 3 --minutes 5 [--record BENCHMARKS.md]
    python bench/ensemble.py ARCHIVE --profile fast --members 2     # GPU: each run's full schedule
    python bench/ensemble.py --dry-run                               # tiny synthetic runs, seconds

Trains `--members` runs of one profile with seeds 0 … N-1 (each fitted to `--minutes` of training
when given, as cpu_time_to_accuracy.py does), takes each run's EMA weights when it keeps an EMA
(raw otherwise), and scores each member alone and the ensemble of the first k members (k = 2 … N,
logits averaged, as select and predict do) under TTA none, flip and flip_translate. The whole ensemble's
trainable parameters are checked against the budget before anything trains, with the same check
select uses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import (
    accuracy_of,
    bench_arguments,
    logits_per_policy,
    markdown_table,
    parse_bench_arguments,
    prepare_data,
    profile_params,
    tiny,
    train_budgeted,
)
from rich.console import Console

from pipeline.engine.models import build_model, check_ensemble_budget, count_trainable_params
from pipeline.errors import PipelineError

console = Console()
POLICIES = ("none", "flip", "flip_translate")  # multicrop's 10 views cost too much CPU time here


def accuracies(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    return {policy: accuracy_of(policy_logits, labels) for policy, policy_logits in logits.items()}


def formatted(accuracy: dict[str, float]) -> str:
    return (f"{accuracy['none']:.2%} plain, {accuracy['flip']:.2%} flip, "
            f"**{accuracy['flip_translate']:.2%}** flip + translate")  # fmt: skip


def markdown_section(result: dict, source: str) -> str:
    members, ensembles = result["members"], result["ensembles"]
    first = members[0]
    budget = (
        f"{result['minutes']:g} minutes of training each"
        if result["minutes"]
        else "the profile's full schedule"
    )
    rows = [
        ("machine", first["machine"]),
        ("torch", first["torch"]),
        ("date", first["date"]),
        ("data", f"{source} ({first['train_images']} training images, test_batch as the test set)"),
        ("profile", f"`{result['profile']}`: {first['model']}, {first['model_params']:,} trainable params each"),
        ("training", f"{budget}: " + ", ".join(
            f"{m['epochs_run']} epochs in {m['training_seconds']:.0f} s" for m in members)),
        ("weights", ", ".join(m["weights"] for m in members)),
    ]  # fmt: skip
    for member in members:
        rows.append((f"member seed {member['seed']}", formatted(member["accuracy"])))
    for ensemble in ensembles:
        best = max(m["accuracy"]["flip_translate"] for m in members[: ensemble["size"]])
        rows.append((
            f"ensemble of {ensemble['size']} ({ensemble['model_params']:,} params)",
            f"{formatted(ensemble['accuracy'])}; {ensemble['accuracy']['flip_translate'] - best:+.2%} "
            "over its best member (flip + translate)",
        ))  # fmt: skip
    title = f"### Seed ensemble: `{result['profile']}` × {len(members)} — {first['machine']}"
    return f"{title}\n\n{markdown_table(rows)}"


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data, 2 members")
    parser.add_argument("--profile", default="cpu", help="fast, default, seed or cpu")
    parser.add_argument("--members", type=int, default=3, help="runs (seeds 0 … N-1)")
    parser.add_argument("--minutes", type=float, help="training time per member (default: full)")
    parser.add_argument("--device", default="auto", help="train.device for every member")
    args = parse_bench_arguments(parser, argv)
    if args.members < 2:
        parser.error("--members: at least 2")
    model_params, params = profile_params(args.profile, [])
    if args.dry_run:
        model_params, params = tiny(model_params, params)
        args.device = "cpu"
    params = dataclasses.replace(params, device=args.device)
    single = count_trainable_params(build_model(model_params))
    try:
        check_ensemble_budget([(f"seed {seed}", single) for seed in range(args.members)],
                              model_params.max_params, "use fewer --members or a smaller profile")  # fmt: skip
    except PipelineError as error:
        parser.error(str(error))
    minutes = 0.05 if args.dry_run and args.minutes is None else args.minutes

    members, logits = [], []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        prepared_dir = prepare_data(
            args.workdir or Path(scratch), None if args.dry_run else args.archive
        )
        for seed in range(args.members):
            console.print(f"member seed {seed}: profile {args.profile}")
            trained, test_set, figures = train_budgeted(
                prepared_dir, model_params, dataclasses.replace(params, seed=seed),
                minutes * 60 if minutes else None, console.print,
            )  # fmt: skip
            weights = "ema" if "ema" in trained else "raw"
            member_logits, seconds = logits_per_policy(trained[weights], test_set, params, POLICIES)
            logits.append(member_logits)
            member = figures | {
                "seed": seed, "weights": weights, "tta_seconds": seconds,
                "accuracy": accuracies(member_logits, test_set[1]),
            }  # fmt: skip
            members.append(member)
            console.print(f"member seed {seed}: {formatted(member['accuracy'])}")
        labels = test_set[1]
    ensembles = []
    for size in range(2, args.members + 1):
        averaged = {
            policy: torch.stack([member[policy] for member in logits[:size]]).mean(0)
            for policy in POLICIES
        }
        ensembles.append({"size": size, "model_params": single * size,
                          "accuracy": accuracies(averaged, labels)})  # fmt: skip
        console.print(f"ensemble of {size}: {formatted(ensembles[-1]['accuracy'])}")
    result = {
        "profile": args.profile,
        "minutes": minutes,
        "members": members,
        "ensembles": ensembles,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.record:
        source = "synthetic (dry run)" if args.dry_run else args.archive.name
        with args.record.open("a") as handle:
            handle.write("\n" + markdown_section(result, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
