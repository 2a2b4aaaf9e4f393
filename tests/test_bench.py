"""The benchmark scripts run end to end in their dry mode (tiny synthetic data, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, prepare_synthetic


def _bench(tmp_path: Path, script: str, *args: str) -> tuple[dict, str]:
    record, figures = tmp_path / "BENCHMARKS.md", tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), "--dry-run", "--record", str(record), "--json", str(figures), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = record.read_text()
    assert "| torch |" in text and "CPU only" in text and "| date |" in text
    return json.loads(figures.read_text()), text


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["fast", "default"])  # seed: the budget test below
def test_gpu_profiles_benchmark_dry_run_records_its_figures(tmp_path: Path, profile: str) -> None:
    data, text = _bench(tmp_path, "gpu_profiles.py", "--profile", profile, "--runs", "2")
    assert data["summary"]["runs"] == 2 and len(data["runs"]) == 2
    assert {run["train_params"]["seed"] for run in data["runs"]} == {0, 1}
    run = data["runs"][0]
    assert run["epochs"] == 2 and len(run["per_epoch"]) == 2
    assert set(run["test_accuracy"]) >= {"raw_none", "raw_flip", "raw_flip_translate"}
    if profile == "default":  # the EMA weights are scored too
        assert "ema_flip_translate" in run["test_accuracy"]
    assert f"### Profile `{profile}` × 2" in text and "mean" in text


@pytest.mark.slow
def test_gpu_profiles_benchmark_compresses_a_profile_into_a_time_budget(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "gpu_profiles.py", "--profile", "seed", "--budget-seconds", "0.2")
    run = data["runs"][0]
    assert run["budget_seconds"] == 0.2 and run["calibrated_seconds_per_step"] > 0
    assert run["epochs_run"] < run["planned_epochs"] == 2  # tiny profile: 2 epochs of 5 steps


@pytest.mark.slow
def test_cpu_time_to_accuracy_dry_run_compares_the_cpu_and_seed_profiles(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "cpu_time_to_accuracy.py")
    assert list(data) == ["cpu", "seed"]
    for result in data.values():
        assert (
            result["budget_seconds"] == pytest.approx(3.0)
            and result["tta_seconds"]["flip_translate"] > 0
        )
    assert "`cpu`: test accuracy" in text and "`seed`: test accuracy" in text


@pytest.mark.slow
def test_cpu_throughput_dry_run_measures_every_model(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "cpu_throughput.py")
    labels = [model["label"] for model in data["models"]]
    assert len(labels) == 5 and any("resnet_wide" in label for label in labels)
    assert all(model["train_images_per_second"] > 0 for model in data["models"])
    assert "| model | trainable params |" in text


@pytest.mark.slow
def test_ensemble_dry_run_scores_the_members_and_their_averages(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "ensemble.py", "--members", "3")
    assert [member["seed"] for member in data["members"]] == [0, 1, 2]
    assert [ensemble["size"] for ensemble in data["ensembles"]] == [2, 3]
    single = data["members"][0]["model_params"]
    assert data["ensembles"][-1]["model_params"] == 3 * single
    for entry in data["members"] + data["ensembles"]:
        assert set(entry["accuracy"]) == {"none", "flip", "flip_translate"}
    assert "### Seed ensemble: `cpu` × 3" in text and "over its best member" in text


def test_ensemble_benchmark_refuses_an_ensemble_over_budget_before_training(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench/ensemble.py"), str(tmp_path / "never-read.tar.gz"), "--profile", "default", "--members", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "ensemble over budget" in result.stderr
    assert "seed 0 4,836,736 + seed 1 4,836,736 = 9,673,472" in result.stderr
    assert "member seed 0" not in result.stdout


def test_gpu_benchmark_refuses_to_run_without_cuda_unless_dry(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench/gpu_profiles.py"), str(tmp_path / "x.tar.gz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "no CUDA device here" in result.stderr


@pytest.mark.slow
def test_shift_dry_run_measures_a_baseline_and_a_variant_that_reuses_its_model(
    tmp_path: Path,
) -> None:
    data, text = _bench(tmp_path, "shift.py", "--workdir", str(tmp_path / "work"),
                        "--variants", "baseline,adabn_balance+distill")  # fmt: skip
    baseline, combined = data["results"]
    assert baseline["variant"] == "baseline" and combined["reran_from"] == "select"
    assert (
        "train" not in combined["stage_seconds"]
        or combined["stage_seconds"]["train"] == (baseline["stage_seconds"]["train"])
    )  # reused from the baseline, not trained again
    assert sum(combined["predicted_per_class"]) == sum(combined["actual_per_class"]) == 40
    assert combined["predicted_per_class"] == [4] * 10  # balanced to the uniform prior
    assert "| adabn_balance+distill" in text and combined["cifar10_test_accuracy"] is not None


@pytest.mark.slow
def test_the_gpu_session_script_runs_every_step_in_its_dry_mode(tmp_path: Path) -> None:
    """bench/gpu_session.sh on the CPU: benchmark 6 (ours only), a default run and its deeper
    setting, and two pairs of same-seed runs whose weights must match (CPU training is
    deterministic either way)."""
    out = tmp_path / "out"
    work = tmp_path / "work"  # the prepared data: not under OUT, which the device empties
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_session.sh"), "--dry-run", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=os.environ | {"GPU_SESSION_WORK": str(work)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    airbench = json.loads((out / "vs_airbench.json").read_text())
    assert airbench["summary"]["ours"]["runs"] == len(airbench["ours"]) == 2  # warm-up dropped
    assert airbench["airbench94"] == [] and "airbench94 needs CUDA" in airbench["skipped"]
    assert {run["train_params"]["seed"] for run in airbench["ours"]} == {1, 2}
    for deterministic in ("true", "false"):
        pair = json.loads((out / f"reproduce_deterministic_{deterministic}.json").read_text())
        assert [run["train_params"]["seed"] for run in pair["runs"]] == [0, 0]
        assert pair["summary"]["distinct_weights"] == 1  # bit-identical weights
    assert json.loads((out / "default.json").read_text())["runs"][0]["model"] == "airnet"
    deeper = json.loads((out / "deeper.json").read_text())["runs"][0]
    assert deeper["model_config"]["residual_convs"] == 2 and deeper["residual"]
    from pipeline.engine.models import count_trainable_params
    from pipeline.models.airnet import AirNet

    tiny_deeper = AirNet(deeper["model_config"]["widths"], residual=True, residual_convs=2)
    assert deeper["model_params"] == count_trainable_params(tiny_deeper)  # the deeper net ran
    assert deeper["budget_seconds"] == 360
    text = (out / "BENCHMARKS.md").read_text()
    assert "### `fast` against airbench94" in text and "| airbench94 | not run" in text
    assert "| distinct final weights (sha256) | 1 of 2 runs |" in text
    assert (work / "data" / "prepared" / "train.npz").exists() and not (out / "work").exists()


def test_the_gpu_session_script_refuses_an_archive_that_is_not_cifar10(tmp_path: Path) -> None:
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_bytes(b"not the archive")
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_session.sh"), str(fake), "sdist", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "neither the official CIFAR-10 archive" in result.stderr
    assert not (tmp_path / "o").exists()


def test_vs_airbench_compares_medians_as_a_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from vs_airbench import comparison

    ours = [{"training_seconds": s, "test_accuracy": {"raw_flip_translate": a}}
            for s, a in [(1.0, 0.94), (3.0, 0.95), (2.0, 0.93)]]  # fmt: skip
    theirs = [{"training_seconds": s, "test_accuracy": {"flip_translate": 0.94}} for s in (4, 5, 3)]
    totals = comparison(ours, theirs)
    assert totals["ours"]["median_training_seconds"] == 2.0
    assert totals["airbench94"]["median_training_seconds"] == 4.0
    assert totals["time_ratio"] == 0.5
    assert totals["ours"]["mean_accuracy"] == pytest.approx(0.94)
    assert totals["ours"]["min_accuracy"] == 0.93


def test_airbench_reads_its_data_from_a_cache_written_from_the_prepared_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """airbench's CifarLoader reads cifar10/train.pt and test.pt when they exist; otherwise
    torchvision checks the batches against the official md5s and downloads (no network on the
    GPU machine). The cache holds what CifarLoader would write: the same images and labels."""
    import numpy as np
    import torch

    from pipeline.classes import CIFAR10_CLASS_NAMES
    from pipeline.data.prepared import load_split

    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from vs_airbench import write_airbench_cache

    prepared = prepare_synthetic(tmp_path)
    cache = write_airbench_cache(prepared, tmp_path / "work")
    assert cache == tmp_path / "work" / "cifar10"
    for split, name in (("train", "train.pt"), ("val", "test.pt")):
        data = torch.load(cache / name, weights_only=True)
        arrays = load_split(prepared, split)
        assert data["images"].dtype == torch.uint8 and data["images"].shape[1:] == (32, 32, 3)
        assert np.array_equal(data["images"].numpy(), arrays["images"])
        assert data["labels"].dtype == torch.int64
        assert np.array_equal(data["labels"].numpy(), arrays["labels"])
        assert data["classes"] == list(CIFAR10_CLASS_NAMES)


def test_an_airbench_sdist_that_is_not_pypis_is_refused_before_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from vs_airbench import AIRBENCH_SDIST_SHA256, import_airbench

    fake = tmp_path / "airbench-0.1.8.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(
        SystemExit, match=f"is not PyPI's airbench 0.1.8 sdist \\({AIRBENCH_SDIST_SHA256}\\)"
    ):
        import_airbench(fake, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


def test_same_seed_deterministic_runs_with_different_weights_fail_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduce check: with train.deterministic on, two same-seed runs must end in the same
    weights; different digests are a failure (exit 1), not just a figure in the record."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import gpu_profiles

    digests = iter(["a" * 64, "b" * 64, "c" * 64, "c" * 64])

    def fake_run(_prepared, _model, params, _budget, _log) -> dict:
        return {
            "machine": "test machine", "torch": "x", "date": "today", "train_images": 1,
            "test_images": 1, "model": "airnet", "model_params": 1, "residual": False,
            "epochs_run": 1, "training_seconds": 1.0, "median_epoch_seconds": 1.0,
            "train_params": {"seed": params.seed}, "weights_sha256": next(digests),
            "test_accuracy": {"raw_none": 0.5}, "tta_seconds": {"flip_translate": 0.1},
        }  # fmt: skip

    monkeypatch.setattr(gpu_profiles, "train_and_score", fake_run)
    monkeypatch.setattr(gpu_profiles, "prepare_data", lambda workdir, archive: workdir)
    arguments = ["--dry-run", "--runs", "2", "--same-seed", "--workdir", str(tmp_path)]
    assert gpu_profiles.main([*arguments, "--set", "train.deterministic=true"]) == 1
    assert gpu_profiles.main([*arguments, "--set", "train.deterministic=true"]) == 0  # c, c
    digests = iter(["d" * 64, "e" * 64])
    assert gpu_profiles.main([*arguments, "--set", "train.deterministic=false"]) == 0


def test_a_low_res_recipes_budget_probe_weighs_both_sides_by_their_share_of_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import dataclasses

    from pipeline.config.load import load_profile
    from pipeline.engine.timing import planned_seconds_per_step

    def probe(_model, _params, _train, _normalization, pixels: int = 0) -> float:
        return {0: 4.0, 24: 2.0}[pixels]  # seconds per step at 32 and at 24 pixels

    recipe = dataclasses.replace(load_profile("cpu").train, low_res_pixels=0, low_res_fraction=0.0)
    assert planned_seconds_per_step(None, recipe, None, None, probe) == (4.0, {32: 4.0})
    low_res = dataclasses.replace(recipe, low_res_pixels=24, low_res_fraction=0.75)
    assert planned_seconds_per_step(None, low_res, None, None, probe) == (
        0.75 * 2.0 + 0.25 * 4.0,
        {32: 4.0, 24: 2.0},
    )
