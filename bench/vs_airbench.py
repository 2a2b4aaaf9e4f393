"""Benchmark 6: a profile (`fast`) against airbench94 (PyPI airbench 0.1.8), alternately on one GPU.

    python bench/vs_airbench.py ARCHIVE --airbench-sdist airbench-0.1.8.tar.gz [--runs 10]
        [--warmup-runs 1] [--profile fast] [--set train.KEY=VALUE] [--record BENCHMARKS.md]
    python bench/vs_airbench.py --dry-run    # CPU, tiny synthetic data: ours only

Both train on CIFAR-10's 50,000 training images and are scored on `test_batch` by this
pipeline's TTA code (`flip_translate`: 6 views with airbench's level-2 weights), so the same TTA
is applied to both. After the warm-up runs of each (torch.compile, cuDNN autotuning: figures
dropped) the runs alternate, ours then airbench's, so a drift of the GPU's clocks reaches both.

Training seconds:
- ours: the sum of `fit`'s epoch loops (validation passes excluded), as benchmark 3;
- airbench's: the synchronised wall time of `train94(train_loader, verbose=False)`: its epochs,
  and also building its network, its whitening init and loading its cached test set to the GPU
  (airbench's own printed figure counts the whitening init too). Those extras are on its side
  only, tens of milliseconds against seconds: the ratio leans that much in our favour, and the
  record says so. No evaluation (with verbose off it runs none). Its train loader is made
  before the clock starts.
The speed ratio is our median over airbench's median, from the same run on the same GPU.

airbench is a bench-only extra (`pip install .[bench]`), never a dependency of the pipeline.
`--airbench-sdist` puts the sdist's pure-Python package on the path instead (the GPU machine
reaches no registry; `pip download airbench==0.1.8 --no-deps --no-binary :all: -d vendor` gets
it, and its sha256 is checked against PyPI's). airbench reads CIFAR-10 from ./cifar10/train.pt and test.pt when they
exist (else through torchvision, which downloads when the batch files' md5s are not the official
ones, as a rebuilt archive's are not): the script writes both from the prepared splits before any
clock starts. airbench needs CUDA: without it (the dry run) only our runs are made, and the
record says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    accuracy_of,
    bench_arguments,
    markdown_table,
    parse_bench_arguments,
    prepare_data,
    profile_params,
    tiny,
    train_and_score,
)
from rich.console import Console

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.data.prepared import load_split
from pipeline.engine.device import FLOAT32
from pipeline.engine.normalise import to_device_tensor
from pipeline.engine.tta import predict_logits

console = Console()
SCORED_POLICY = "flip_translate"  # the TTA both are scored with (airbench94's own tta_level 2)
AIRBENCH_VERSION = "0.1.8"
# PyPI's airbench-0.1.8.tar.gz (pip download airbench==0.1.8 --no-deps --no-binary :all:)
AIRBENCH_SDIST_SHA256 = "f85885d8afe9018b8da132a4224ad7b47d75c9f99fd985d0a687567a25cf4a33"


def import_airbench(sdist: Path | None, scratch: Path):
    """The airbench module: the installed extra, or the sdist's package unpacked into scratch
    (checked first against PyPI's sha256 of airbench 0.1.8)."""
    if sdist is not None:
        found = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if found != AIRBENCH_SDIST_SHA256:
            raise SystemExit(
                f"vs_airbench: {sdist}: sha256 {found} is not PyPI's airbench {AIRBENCH_VERSION} "
                f"sdist ({AIRBENCH_SDIST_SHA256}); get it with `pip download "
                f"airbench=={AIRBENCH_VERSION} --no-deps --no-binary :all: -d vendor`"
            )
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch / "airbench-sdist", filter="data")
        (package_root,) = (scratch / "airbench-sdist").iterdir()
        package = package_root / "airbench"
        spec = importlib.util.spec_from_file_location(
            "airbench", package / "__init__.py", submodule_search_locations=[str(package)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["airbench"] = module  # before it runs: its modules import `airbench.…`
        spec.loader.exec_module(module)
        return module
    import airbench

    return airbench


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class HalfInput(torch.nn.Module):
    """airbench's fp16 network behind float32 inputs: what predict_logits hands any model."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.half()).float()


def airbench_run(airbench, workdir: Path, test_images, test_labels, run: int) -> dict:
    """One airbench94 training from ./cifar10 under workdir, timed; scored with our TTA."""
    with working_directory(workdir):
        hyp = airbench.lib_airbench94.hyp
        loader = airbench.CifarLoader(
            "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
            altflip=True,
        )  # fmt: skip
        torch.cuda.synchronize()
        started = time.perf_counter()
        network = airbench.train94(train_loader=loader, run=run, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    mean, std = airbench.utils.CIFAR_MEAN.tolist(), airbench.utils.CIFAR_STD.tolist()
    images = to_device_tensor(test_images, mean, std, torch.device("cuda"))
    labels = torch.from_numpy(test_labels).cuda()
    accuracy = {
        policy: accuracy_of(
            predict_logits(HalfInput(network), images, policy, 2000, FLOAT32), labels
        )
        for policy in ("none", SCORED_POLICY)
    }
    return {"training_seconds": seconds, "test_accuracy": accuracy}


def write_airbench_cache(prepared_dir: Path, workdir: Path) -> Path:
    """./cifar10/train.pt and test.pt under workdir, from the prepared train and val splits
    (prepare.val is test_batch): the cache airbench's CifarLoader reads before it would ask
    torchvision. torchvision would check each batch file against the official md5s, which a
    rebuilt archive (shared/data's) fails, then try to download: the GPU machine has no network.
    Each file is what CifarLoader itself writes: uint8 (N, 32, 32, 3) images, int64 labels and
    the class names."""
    cache = workdir / "cifar10"
    cache.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.pt"), ("val", "test.pt")):
        arrays = load_split(prepared_dir, split)
        torch.save(
            {
                "images": torch.from_numpy(arrays["images"]),
                "labels": torch.from_numpy(arrays["labels"].astype(np.int64)),
                "classes": list(CIFAR10_CLASS_NAMES),  # prepare checked them
            },
            cache / name,
        )
    return cache


def summary(runs: list[dict], key: str = SCORED_POLICY) -> dict:
    accuracies = [run["test_accuracy"][key] for run in runs]
    return {
        "runs": len(runs),
        "mean_accuracy": statistics.mean(accuracies),
        "min_accuracy": min(accuracies),
        "median_training_seconds": statistics.median(r["training_seconds"] for r in runs),
    }


def comparison(ours: list[dict], theirs: list[dict]) -> dict:
    """Both sides' summaries and the ratio of median training times (ours / airbench's)."""
    result = {"ours": summary(ours, f"raw_{SCORED_POLICY}")}
    if theirs:
        result["airbench94"] = summary(theirs)
        result["time_ratio"] = (
            result["ours"]["median_training_seconds"]
            / result["airbench94"]["median_training_seconds"]
        )
    return result


def markdown_section(profile: str, overrides: list[str], ours: list[dict], totals: dict,
                     source: str, skipped: str | None) -> str:  # fmt: skip
    first, mine = ours[0], totals["ours"]
    rows = [
        ("machine", first["machine"]),
        ("torch", first["torch"]),
        ("date", first["date"]),
        ("data", f"{source} ({first['train_images']} training images, test_batch as the test set)"),
        ("ours", f"profile {profile}{' ' + ' '.join(overrides) if overrides else ''}: "
                 f"{first['model']}, {first['model_params']:,} params, {first['epochs_run']} epochs"),
        ("ours: test accuracy (6-view TTA)", f"mean {mine['mean_accuracy']:.2%}, min "
                                             f"{mine['min_accuracy']:.2%} over {mine['runs']} runs"),
        ("ours: median training time", f"{mine['median_training_seconds']:.3f} s"),
    ]  # fmt: skip
    if skipped:
        rows.append(("airbench94", skipped))
    else:
        theirs = totals["airbench94"]
        rows += [
            ("airbench94 (PyPI airbench 0.1.8): test accuracy (6-view TTA, ours)",
             f"mean {theirs['mean_accuracy']:.2%}, min {theirs['min_accuracy']:.2%} over "
             f"{theirs['runs']} runs"),
            ("airbench94: median training time", f"{theirs['median_training_seconds']:.3f} s"),
            ("time ratio, ours / airbench94 (medians)", f"**{totals['time_ratio']:.2f}** "
             "(airbench's time also holds its net's build, whitening init and test-set load)"),
        ]  # fmt: skip
    title = f"### `{profile}` against airbench94 — {first['machine'].split(' (')[0]}"
    return f"{title}\n\n{markdown_table(rows)}"


def main(argv: list[str] | None = None) -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data on the CPU, ours only")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each (n ≥ 10)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="untimed runs of each first")
    parser.add_argument("--airbench-sdist", type=Path, help=f"airbench-{AIRBENCH_VERSION}.tar.gz")
    args = parse_bench_arguments(parser, argv)
    model_params, params = profile_params(args.profile, args.set)
    skipped = None
    if args.dry_run:
        model_params, params = tiny(model_params, params)
        skipped = "not run: a dry run on the CPU (airbench94 needs CUDA)"
    elif not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark is for GPUs (--dry-run checks it on CPU)")

    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        prepared_dir = prepare_data(workdir, None if args.dry_run else args.archive)
        airbench = None
        if skipped is None:
            airbench = import_airbench(args.airbench_sdist, Path(scratch))
            write_airbench_cache(prepared_dir, workdir)
            test = load_split(prepared_dir, "val")  # test_batch: prepare.val is test_batch
        ours: list[dict] = []
        theirs: list[dict] = []
        for index in range(args.warmup_runs + args.runs):
            counted = index >= args.warmup_runs
            run_params = dataclasses.replace(params, seed=params.seed + index)
            result = train_and_score(prepared_dir, model_params, run_params, None, console.print)
            if counted:
                ours.append(result)
            line = f"ours {result['training_seconds']:.3f} s {result['test_accuracy']['raw_' + SCORED_POLICY]:.4f}"
            if airbench is not None:
                their = airbench_run(airbench, workdir, test["images"], test["labels"], index)
                if counted:
                    theirs.append(their)
                line += f" | airbench94 {their['training_seconds']:.3f} s {their['test_accuracy'][SCORED_POLICY]:.4f}"
            console.print(f"{'run' if counted else 'warm-up'} {index + 1}: {line}")
            if args.json and ours:  # after every run: a crash later keeps what was measured
                totals = comparison(ours, theirs)
                args.json.write_text(json.dumps(
                    {"summary": totals, "ours": ours, "airbench94": theirs, "skipped": skipped},
                    indent=2,
                ))  # fmt: skip

    totals = comparison(ours, theirs)
    console.print(json.dumps(totals, indent=2))
    if args.record:
        source = "synthetic (dry run)" if args.dry_run else args.archive.name
        with args.record.open("a") as handle:
            handle.write(
                "\n" + markdown_section(args.profile, args.set, ours, totals, source, skipped)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
