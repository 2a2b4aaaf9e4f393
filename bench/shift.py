"""Benchmark 5: accuracy on CIFAR-10 test and on a shifted test set, per method, side by side.

The competition scores a custom test set whose images come from another source than CIFAR-10.
This benchmark writes a labeled stand-in from another source (an .npz of `images` uint8
(N, 32, 32, 3) and `labels`, e.g. shared/shift/imagenet_dev.npz) as the custom test pickle,
unlabeled, exactly what the pipeline sees on Kaggle, and runs the pipeline's stages
(`python -m pipeline STAGE`, as `dvc repro` does) for each variant in its own folder:

- shift accuracy: the variant's submissions/latest.csv against the stand-in's labels;
- CIFAR-10 test accuracy: the same model's predict stage run again with CIFAR-10's `test_batch`
  as the custom test set (so test-time adaptation sees CIFAR-10 images there), against its
  labels. A variant that trains on `test_batch` has no CIFAR-10 test figure;
- the predicted class counts on the shift set, and the seconds of every stage.

A variant is a set of `section.key=value` overrides on a profile. A variant whose changes
start at a later stage (test-time adaptation: predict only; distillation: after select)
reuses its base variant's earlier outputs (hard links) instead of training again, and its time
counts the base's stages it reused. Every variant's folder is kept under --workdir: a variant
whose folder already holds its results is reported, not run again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import bench_arguments, markdown_table, read_csv_labels, run_facts

from pipeline.config.load import (
    DEFAULT_PARAMS_PATH,
    params_from_dict,
    parse_overrides,
    profile_values,
    with_overrides,
)
from pipeline.config.stage_params import STAGE_PARAMS, STAGES
from pipeline.config.yaml_files import dump_yaml, read_yaml
from pipeline.data.formats import find_custom_test, write_custom_test

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # section.key=value on the profile
    base: str | None = None  # the variant whose earlier outputs this one reuses
    note: str = ""


# What each issue-13 method changes; combinations are listed by name on the command line.
VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("baseline", (), note="the profile as it was before issue 13's methods"),
        Variant(
            "adabn",
            ("adapt.batchnorm=true",),
            base="baseline",
            note="BatchNorm statistics of the custom-test images",
        ),
        Variant(
            "balance",
            ("adapt.balance=prior",),
            base="baseline",
            note="predictions assigned to a uniform prior",
        ),
        Variant("adabn_balance", ("adapt.batchnorm=true", "adapt.balance=prior"), base="baseline"),
        Variant(
            "distill",
            ("distill.rounds=1",),
            base="baseline",
            note="student on train + custom test with the teacher's soft targets",
        ),
        Variant(
            "test_batch",
            ("prepare.val=holdout", "prepare.train_on_test_batch=true"),
            note="train + test_batch, 5,000 training images held out for validation",
        ),
        Variant("autoaugment", ("train.augment_policy=autoaugment",)),
        Variant("randaugment", ("train.augment_policy=randaugment",)),
        Variant("trivialaugment", ("train.augment_policy=trivial",)),
    )  # fmt: skip
}


def neutral_overrides(params_values: dict) -> list[str]:
    """Issue 13's methods switched off, whatever the shipped params choose: the baseline."""
    off = ["distill.rounds=0", "adapt.batchnorm=false", "adapt.balance=none"]
    return [item for item in off if item.split(".")[0] in params_values]


def variant_values(
    base_values: dict, profile: str, variant: Variant, common: list[str], data: dict
) -> dict:
    values = base_values | profile_values(profile) | {"data": data}
    overrides = neutral_overrides(base_values) + list(common) + list(variant.overrides)
    values = with_overrides(values, parse_overrides(overrides))
    params_from_dict(values)  # refused here, before anything runs
    return values


def flat(values: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, name + ".")
        else:
            out[name] = value
    return out


def first_changed_stage(values: dict, base_values: dict) -> str:
    """The first stage (after fetch) that reads a param where the two differ."""
    mine, theirs = flat(values), flat(base_values)
    changed = {key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key)}
    for stage in STAGES[STAGES.index("prepare") :]:
        declared = STAGE_PARAMS[stage]
        if stage == "predict" or any(
            key == name or key.startswith(name + ".") for key in changed for name in declared
        ):
            return stage
    return "predict"


def run_stage(folder: Path, stage: str, env: dict, log) -> float:
    started = time.perf_counter()
    log_path = folder / f"{stage}.log"
    with log_path.open("w") as output:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", stage], cwd=folder, env=env,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode:
        tail = log_path.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"{folder.name}: {stage} failed ({' / '.join(tail)}); see {log_path}")
    log(f"{folder.name}: {stage} {seconds:.0f} s")
    return seconds


def link_tree(source: Path, target: Path) -> None:
    """Hard-link copies of a base variant's outputs (a stage that rewrites one replaces it)."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True)
    elif source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)


def cifar_test_view(folder: Path, env: dict, log) -> tuple[float, float]:
    """Predict again with CIFAR-10's test images as the custom test set: (accuracy, seconds)."""
    view = folder / "cifar_test_as_custom"
    shutil.rmtree(view, ignore_errors=True)
    (view / "data/prepared").mkdir(parents=True)
    for item in (folder / "data/prepared").iterdir():
        if item.name != "custom_test.npz":
            os.link(item, view / "data/prepared" / item.name)
    val = np.load(folder / "data/prepared/val.npz")
    np.savez(view / "data/prepared/custom_test.npz", images=val["images"],
             ids=np.arange(val["labels"].size))  # fmt: skip
    link_tree(folder / "models", view / "models")
    shutil.copy(folder / "params.yaml", view / "params.yaml")
    seconds = run_stage(view, "predict", env, log)
    labels = read_csv_labels(view / "submissions/latest.csv")
    return float((labels == val["labels"]).mean()), seconds


def run_variant(
    workdir: Path, tag: str, variant: Variant, values: dict, base_values: dict | None,
    raw_dir: Path, shift_labels: np.ndarray, env: dict, log,
) -> dict:  # fmt: skip
    folder = workdir / f"{tag}{variant.name}"
    result_path = folder / "result.json"
    if result_path.exists():
        log(f"{folder.name}: already measured ({result_path})")
        return json.loads(result_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(dump_yaml(values))
    (folder / "data").mkdir()
    os.symlink(raw_dir.resolve(), folder / "data/raw")
    seconds: dict[str, float] = {}
    first = "prepare"
    if variant.base is not None:
        base_folder = workdir / f"{tag}{variant.base}"
        first = first_changed_stage(values, base_values)
        base_seconds = json.loads((base_folder / "result.json").read_text())["stage_seconds"]
        for stage in STAGES[STAGES.index("prepare") : STAGES.index(first)]:
            seconds[stage] = base_seconds.get(stage, 0.0)
        for item in ("data/prepared", "models", "metrics"):
            link_tree(base_folder / item, folder / item)
    for stage in STAGES[STAGES.index(first) :]:
        seconds[stage] = run_stage(folder, stage, env, log)
    predicted = read_csv_labels(folder / "submissions/latest.csv")
    report = json.loads((folder / "metrics/predict.json").read_text())
    val_source = json.loads((folder / "data/prepared/dataset.json").read_text())["val_source"]
    trained_on_test = (values.get("prepare") or {}).get("train_on_test_batch", False)
    cifar_accuracy, view_seconds = (None, None)
    if val_source == "test_batch" and not trained_on_test:
        cifar_accuracy, view_seconds = cifar_test_view(folder, env, log)
    result = {
        "variant": variant.name, "overrides": list(variant.overrides), "base": variant.base,
        "reran_from": first, "note": variant.note,
        "cifar10_test_accuracy": cifar_accuracy,
        "shift_accuracy": float((predicted == shift_labels).mean()),
        "val_source": val_source, "val_accuracy": report.get("val_accuracy"),
        "predicted_per_class": np.bincount(predicted, minlength=10).tolist(),
        "actual_per_class": np.bincount(shift_labels, minlength=10).tolist(),
        "stage_seconds": seconds, "seconds": sum(seconds.values()),
        "cifar_view_predict_seconds": view_seconds,
    }  # fmt: skip
    result_path.write_text(json.dumps(result, indent=1))
    return result


def shared_raw_data(workdir: Path, archive: Path | None, shift: dict, env: dict, log) -> dict:
    """Fetch once into workdir/shared: CIFAR-10 (or synthetic data) with the shift set as the
    custom test pickle."""
    shared = workdir / "shared"
    pickle_path = shared / "cifar_test_nolabel.pkl"
    if archive is None:  # dry run: synthetic CIFAR-shaped data, its custom test replaced below
        data = {
            "source": "synthetic",
            "synthetic": {
                "train_images": 300,
                "val_images": 100,
                "custom_test_images": 10,
                "seed": 0,
            },
        }
    else:
        data = {"source": "local", "path": str(archive.resolve()),
                "custom_test_path": str(pickle_path.resolve())}  # fmt: skip
    if not (shared / "data/raw").exists():
        shared.mkdir(parents=True, exist_ok=True)
        write_custom_test(pickle_path, shift["images"], np.arange(shift["labels"].size))
        values = read_yaml(REPO_ROOT / DEFAULT_PARAMS_PATH) | {"data": data}
        (shared / "params.yaml").write_text(dump_yaml(values))
        run_stage(shared, "fetch", env, log)
        if archive is None:
            shutil.copyfile(pickle_path, find_custom_test(shared / "data/raw"))
    return data


def dry_shift_set(count: int = 40) -> dict:
    rng = np.random.default_rng(1)
    return {"images": rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            "labels": np.arange(count) % 10}  # fmt: skip


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def markdown(results: list[dict], facts: dict, args, baseline: dict | None) -> str:
    lines = [
        f"### {args.profile} profile, {args.tag or 'as shipped'} — {facts['machine']}", "",
        markdown_table([("machine", facts["machine"]), ("torch", facts["torch"]),
                        ("date", facts["date"]), ("profile", args.profile),
                        ("common overrides", ", ".join(args.set) or "none")]),
        "| variant | CIFAR-10 test | dev shift | gap | Δ shift vs baseline | predicted per class "
        "(shift) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for row in results:
        gap = (
            None if row["cifar10_test_accuracy"] is None
            else row["cifar10_test_accuracy"] - row["shift_accuracy"]
        )  # fmt: skip
        delta = None if baseline is None else row["shift_accuracy"] - baseline["shift_accuracy"]
        lines.append(
            f"| {row['variant']} ({', '.join(row['overrides']) or 'none'}) | "
            f"{percent(row['cifar10_test_accuracy'])} | {percent(row['shift_accuracy'])} | "
            f"{'n/a' if gap is None else f'{100 * gap:.2f}'} | "
            f"{'' if delta is None else f'{100 * delta:+.2f}'} | "
            f"{' '.join(map(str, row['predicted_per_class']))} | {row['seconds']:.0f} |"
        )
    actual = results[0]["actual_per_class"]
    lines += ["", f"Actual per class on the shift set: {' '.join(map(str, actual))}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_arguments(__doc__.splitlines()[0], "tiny synthetic data and model, CPU")
    parser.add_argument("--shift", type=Path, help="labeled .npz of images from another source")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument(
        "--variants",
        default="baseline",
        help="comma-separated names, each a VARIANTS key or a+b combination",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="section.key=value for every variant (a shorter budget)",
    )
    parser.add_argument("--tag", default="", help="prefix of the variant folders")
    args = parser.parse_args(argv)
    if not args.dry_run and (args.archive is None or args.shift is None):
        parser.error("give the CIFAR-10 archive and --shift, or --dry-run")
    workdir = (args.workdir or Path("bench-shift")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    if args.dry_run:
        shift = dry_shift_set()
        args.set = [
            *args.set,
            "model.widths=[8,16,16]",
            "train.epochs=2",
            "train.batch_size=100",
            "train.checkpoint_every=1",
            "train.device=cpu",
            "train.compile=never",
            "prepare.holdout_images=50",
        ]
    else:
        with np.load(args.shift) as loaded:
            shift = {"images": loaded["images"], "labels": loaded["labels"]}
    log = lambda text: print(text, flush=True)  # noqa: E731
    data = shared_raw_data(workdir, None if args.dry_run else args.archive, shift, env, log)
    raw_dir = workdir / "shared/data/raw"
    base_values = read_yaml(REPO_ROOT / DEFAULT_PARAMS_PATH)
    variants = [combined(name) for name in args.variants.split(",")]
    values = {v.name: variant_values(base_values, args.profile, v, args.set, data)
              for v in variants}  # fmt: skip
    results = []
    for variant in variants:
        base = None
        if variant.base is not None:
            base = variant_values(base_values, args.profile, VARIANTS[variant.base], args.set, data)
        results.append(run_variant(workdir, args.tag, variant, values[variant.name], base,
                                   raw_dir, shift["labels"], env, log))  # fmt: skip
    facts = run_facts(__import__("torch").device("cpu"))
    baseline = next((row for row in results if row["variant"] == "baseline"), None)
    text = markdown(results, facts, args, baseline)
    print(text)
    if args.record:
        with args.record.open("a") as record:
            record.write("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "results": results}, indent=1))


def combined(name: str) -> Variant:
    """`a+b`: the overrides of both; it reuses a base only when every part reuses that base."""
    parts = [VARIANTS[part] for part in name.split("+")]
    if len(parts) == 1:
        return parts[0]
    bases = {part.base for part in parts}
    overrides = tuple(item for part in parts for item in part.overrides)
    return Variant(name, overrides, base=bases.pop() if len(bases) == 1 else None)


if __name__ == "__main__":
    main()
