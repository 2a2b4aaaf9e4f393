"""Benchmark 7: the pipeline as a user runs it on a GPU: `dvc repro`, a killed run and its resume.

    python bench/gpu_pipeline.py ARCHIVE --workdir W [--profile fast] [--set SECTION.KEY=VALUE]
        [--record BENCHMARKS.md] [--json FIGURES.json]
    python bench/gpu_pipeline.py --dry-run --workdir W   # the CPU, synthetic data, a tiny model

The projects are made under W/gpu_pipeline (removed and made again by each run), and kept.

A scratch project is made from this checkout (its tracked files, as a clone has them), with the
profile, `train.deterministic: true`, a checkpoint every epoch and the archive as a local source;
`test_batch`'s images, unlabelled, stand in for the custom test pickle, so the submission CSV can
be scored against their labels. Then:
- the reference: `dvc repro` end to end (fetch, prepare, train, select, predict), timed;
- a copy of the project whose `dvc repro` is SIGKILLed (dvc and its stage, as a crash would) at a
  random moment of training's third epoch, then `dvc repro` again, which must resume;
- the comparison: the last checkpoint's bytes and the CSV's md5, resumed against the reference.
Equal bytes are the reproduce story on this device: a run can be killed and still give the CSV
an uninterrupted run gives. The figures go to --json and --record; the exit status is 1 when the
resumed run differs or did not resume.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    bench_arguments,
    markdown_table,
    parse_bench_arguments,
    read_csv_labels,
    run_facts,
)
from projects import (  # the end-to-end tests' scratch projects, as a user's clone
    copy_project,
    kill_repro_in_third_epoch,
    new_project,
    resume_states,
    sh,
)
from torchvision.datasets.utils import calculate_md5

from pipeline.config.load import parse_overrides, with_overrides  # noqa: E402
from pipeline.data.formats import (  # noqa: E402
    CIFAR_FOLDER,
    VAL_BATCH_NAME,
    load_cifar_batch,
    write_custom_test,
)

# the dry run: tests/test_resume.py's scenario on the CPU, a tiny seed_resnet with dropout (the
# global generator matters) and EMA, synthetic data, six epochs long enough to kill one
DRY_RUN_OVERRIDES = {
    "data": {
        "source": "synthetic",
        "synthetic": {"train_images": 1000, "val_images": 300, "custom_test_images": 200},
    },
    "model": {"base_width": 8, "blocks": [1, 1, 1], "dropout": 0.1},
    "train": {"device": "cpu", "epochs": 6, "batch_size": 50, "lr": 0.05, "schedule": "cosine",
              "ema_decay": 0.9},
    "distill": {"rounds": 0},
}  # fmt: skip


def test_batch_as_custom_test(archive: Path, destination: Path) -> np.ndarray:
    """`test_batch`'s images from the CIFAR-10 archive as the custom test pickle (ids
    0…9,999), unlabelled as Kaggle's is; returns their labels."""
    with tarfile.open(archive) as bundle, tempfile.TemporaryDirectory() as scratch:
        bundle.extract(f"{CIFAR_FOLDER}/{VAL_BATCH_NAME}", scratch, filter="data")
        images, labels = load_cifar_batch(Path(scratch) / CIFAR_FOLDER / VAL_BATCH_NAME)
    write_custom_test(destination, images, np.arange(len(labels)))
    return labels


def timed_repro(project: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = sh(project, "dvc", "repro")
    return time.perf_counter() - started, result.stdout + result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data on the CPU")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parse_bench_arguments(parser, argv)
    if args.workdir is None:
        parser.error("give --workdir: the projects stay there for reading")
    workdir = args.workdir.resolve() / "gpu_pipeline"  # beside other benchmarks' prepared data
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = {"train": {"deterministic": True, "checkpoint_every": 1}}
    labels = None
    if args.dry_run:
        profile = "seed"
        overrides = with_overrides(DRY_RUN_OVERRIDES, overrides)
    else:
        profile = args.profile
        stand_in = workdir / "cifar_test_nolabel.pkl"
        labels = test_batch_as_custom_test(args.archive, stand_in)
        overrides["data"] = {
            "source": "local",
            "path": str(args.archive.resolve()),
            "custom_test_path": str(stand_in),
        }
    overrides = with_overrides(overrides, parse_overrides(args.set))

    for scratch in ("project", "reference", "killed"):  # a rerun starts from scratch
        shutil.rmtree(workdir / scratch, ignore_errors=True)
    base = new_project(workdir, profile, overrides)  # workdir/project: git + DVC, committed
    reference, killed = (
        copy_project(base, workdir / "reference"),
        copy_project(base, workdir / "killed"),
    )
    reference_seconds, _ = timed_repro(reference)
    checkpoints = sorted(p.name for p in (reference / "models/checkpoints").iterdir())
    last = f"models/checkpoints/{checkpoints[-1]}"
    delay = kill_repro_in_third_epoch(killed)
    killed_mid_training = not (killed / last).exists()
    resumed_seconds, output = timed_repro(killed)
    csv = "submissions/latest.csv"
    figures = run_facts_of(args.dry_run) | {
        "profile": profile,
        "overrides": overrides,
        "reference_repro_seconds": reference_seconds,
        "killed_after_seconds_into_epoch_3": delay,
        "resumed_repro_seconds": resumed_seconds,
        "killed_mid_training": killed_mid_training,
        "resumed": "train: resuming after epoch" in output,
        # a finished run removes its resume state
        "resume_state_left": bool(resume_states(reference) or resume_states(killed)),
        # the checkpoints written before the kill came back for select
        "same_checkpoints": checkpoints
        == sorted(p.name for p in (killed / "models/checkpoints").iterdir()),
        "last_checkpoint": last,
        "last_checkpoint_identical": (killed / last).read_bytes()
        == (reference / last).read_bytes(),
        "csv_md5_reference": calculate_md5(reference / csv),
        "csv_md5_resumed": calculate_md5(killed / csv),
        "csv_accuracy_on_test_batch": None
        if labels is None
        else float(np.mean(read_csv_labels(reference / csv) == labels)),
    }
    figures["identical"] = (
        figures["killed_mid_training"] and figures["resumed"] and figures["same_checkpoints"]
        and figures["last_checkpoint_identical"] and not figures["resume_state_left"]
        and figures["csv_md5_reference"] == figures["csv_md5_resumed"]
    )  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.record:
        with args.record.open("a") as handle:
            handle.write("\n" + markdown_section(figures))
    return 0 if figures["identical"] else 1


def run_facts_of(dry_run: bool) -> dict:
    import torch

    return run_facts(torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda"))


def markdown_section(figures: dict) -> str:
    accuracy = figures["csv_accuracy_on_test_batch"]
    rows = [
        ("machine", figures["machine"]),
        ("torch", figures["torch"]),
        ("date", figures["date"]),
        ("project", f"profile {figures['profile']}, train.deterministic true, a checkpoint every epoch"),
        ("`dvc repro` end to end (reference)", f"{figures['reference_repro_seconds']:.1f} s"),
        ("SIGKILL", f"{figures['killed_after_seconds_into_epoch_3']:.2f} s into training's epoch 3"),
        ("`dvc repro` after the kill", f"{figures['resumed_repro_seconds']:.1f} s, "
                                       f"{'resumed' if figures['resumed'] else 'did NOT resume'}"),
        (f"{figures['last_checkpoint']}, resumed against reference",
         "identical bytes" if figures["last_checkpoint_identical"] else "**different**"),
        ("submissions/latest.csv md5, resumed against reference",
         "identical" if figures["csv_md5_reference"] == figures["csv_md5_resumed"] else "**different**"),
        ("the CSV's accuracy on test_batch (its images as the custom test set)",
         "n/a (dry run)" if accuracy is None else f"{accuracy:.2%}"),
    ]  # fmt: skip
    title = f"### `dvc repro`, killed and resumed — {figures['machine'].split(' (')[0]}"
    return f"{title}\n\n{markdown_table(rows)}"


if __name__ == "__main__":
    sys.exit(main())
