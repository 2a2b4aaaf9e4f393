"""A newcomer's run: `dvc repro` on synthetic data in a fresh copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT

from pipeline.submission_csv import validate_submission

# Applied on top of the seed profile (`python -m pipeline profile seed`).
TINY_PARAMS = {
    "data": {
        "source": "synthetic",
        "synthetic": {"train_images": 1000, "val_images": 300, "custom_test_images": 200},
    },
    "model": {"base_width": 8, "blocks": [1, 1, 1], "dropout": 0.0},
    "train": {
        "device": "cpu",
        "epochs": 6,
        "batch_size": 50,
        "lr": 0.05,
        "schedule": "cosine",
        "checkpoint_every": 2,
    },
}


def _copy_repo(destination: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in tracked.splitlines():
        source = REPO_ROOT / name
        if source.is_file() and not name.startswith(("tests/", "bench/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _sh(folder: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _override(project: Path, overrides: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in overrides.items():
        for key, value in values.items():
            params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def _new_project(tmp_path: Path, profile: str, overrides: dict) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    _copy_repo(project)
    _sh(project, sys.executable, "-m", "pipeline", "profile", profile)
    _override(project, overrides)
    _sh(project, "git", "init", "-q")
    if not (project / ".dvc").is_dir():
        _sh(project, "dvc", "init", "-q")
    # A clone has commits; dvclive needs one (it records the baseline revision).
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")
    return project


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(tmp_path: Path) -> None:
    project = _new_project(tmp_path, "seed", TINY_PARAMS)
    first = _sh(project, "dvc", "repro")
    for stage in ("fetch", "prepare", "train", "select", "predict"):
        assert f"Running stage '{stage}'" in first.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"fetch", "prepare", "train", "select", "predict"}

    ids = np.arange(TINY_PARAMS["data"]["synthetic"]["custom_test_images"])
    validate_submission(project / "submissions/latest.csv", ids)
    selected = json.loads((project / "metrics/select.json").read_text())
    assert selected["val_accuracy"] > 0.5  # chance is 0.1
    train_metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    assert train_metrics["model_params"] == selected["model_params"] == 19_954
    data_report = json.loads((project / "metrics/data.json").read_text())
    assert data_report["train_per_class"]["truck"] == 100

    run = json.loads((project / "metrics/predict.json").read_text())["run_id"]
    manifest = json.loads((project / f"submissions/{run}.json").read_text())
    head = _sh(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert manifest["git"] == {
        "commit": head,
        "dirty": False,
    }  # dvc.lock, rewritten by the run, is not dirt
    assert manifest["params"]["train"]["epochs"] == 6 and manifest["dvc_lock_sha256"]
    assert (project / f"submissions/{run}.csv").read_bytes() == (
        project / "submissions/latest.csv"
    ).read_bytes()
    stamp = (project / "submissions/latest.csv").stat().st_mtime_ns
    second = _sh(project, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert (project / "submissions/latest.csv").stat().st_mtime_ns == stamp
    shown = _sh(project, "dvc", "metrics", "show", "--json")
    assert "val_accuracy" in shown.stdout
    plots = json.loads(_sh(project, "dvc", "plots", "show", "--json").stdout)["data"]
    for path in (
        "metrics/val_predictions.csv",
        "metrics/val_per_class.csv",
        "metrics/select_candidates.csv",
    ):
        assert any(path in name for name in plots), (path, list(plots))


SMOKE_DATA = {
    "source": "synthetic",
    "synthetic": {"train_images": 300, "val_images": 100, "custom_test_images": 50},
}
PROFILE_MODEL_PARAMS = {"fast": 1_971_328, "default": 4_836_736, "cpu": 1_112_160}


@pytest.mark.slow
def test_dvc_repro_runs_each_profile_smoke_sized(tmp_path: Path) -> None:
    """Each profile's own model and recipe (EMA, TrivialAugment, ...) for one short epoch."""
    project = _new_project(tmp_path, "fast", {"data": SMOKE_DATA})
    for profile, model_params in PROFILE_MODEL_PARAMS.items():
        _sh(project, sys.executable, "-m", "pipeline", "profile", profile)
        smoke = {"device": "cpu", "epochs": 1, "batch_size": 64, "checkpoint_every": 1}
        _override(project, {"data": SMOKE_DATA, "train": smoke})
        run = _sh(project, "dvc", "repro")
        assert "Running stage 'train'" in run.stdout and "Running stage 'predict'" in run.stdout
        assert (
            json.loads((project / "metrics/train/metrics.json").read_text())["model_params"]
            == model_params
        ), profile
        validate_submission(project / "submissions/latest.csv", np.arange(50))
        selected = json.loads((project / "metrics/select.json").read_text())
        assert selected["weights"] in ("raw", "ema") and selected["model_params"] == model_params
        if profile == "default":  # EMA on: both weight sets were candidates
            candidates = (project / "metrics/select_candidates.csv").read_text()
            assert ",raw," in candidates and ",ema," in candidates
        predicted = json.loads((project / "metrics/predict.json").read_text())
        assert (predicted["tta"], predicted["weights"]) == (selected["tta"], selected["weights"])


@pytest.mark.slow
def test_a_run_pushed_to_a_dvc_remote_comes_back_in_a_fresh_clone(tmp_path: Path) -> None:
    """The README's remote recipe: `dvc remote add -d`, `dvc push`, then `dvc pull` elsewhere."""
    project = _new_project(
        tmp_path, "seed", TINY_PARAMS | {"train": {**TINY_PARAMS["train"], "epochs": 2}}
    )
    _sh(project, "dvc", "repro")
    storage = tmp_path / "dvc-storage"
    _sh(project, "dvc", "remote", "add", "-d", "storage", str(storage))
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    _sh(project, "dvc", "push")
    # a rerun after committing the outputs (metrics, manifest) still finds the tree clean
    _sh(project, "dvc", "repro", "--force", "--single-item", "predict")
    run = json.loads((project / "metrics/predict.json").read_text())["run_id"]
    assert json.loads((project / f"submissions/{run}.json").read_text())["git"]["dirty"] is False
    _sh(project, "git", "checkout", "--", ".")  # back to the committed outputs
    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "submissions/latest.csv").exists()
    _sh(clone, "dvc", "pull")
    original = (project / "submissions/latest.csv").read_bytes()
    assert (clone / "submissions/latest.csv").read_bytes() == original
    assert (clone / "models/best.pt").read_bytes() == (project / "models/best.pt").read_bytes()
    status = _sh(clone, "dvc", "status")
    assert "changed" not in status.stdout  # the pulled outputs match dvc.lock
