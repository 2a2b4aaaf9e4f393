"""Distillation as a user runs it: `dvc repro` with a student, a second repro that does nothing,
and a student killed mid-training that resumes to the same bytes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from projects import TINY_PARAMS, new_project, sh, tool_env
from torchvision.datasets.utils import calculate_md5

from pipeline.records.checkpoint import Checkpoint

pytestmark = pytest.mark.slow
DISTILL_PARAMS = TINY_PARAMS | {
    "data": {
        "source": "synthetic",
        "synthetic": {"train_images": 500, "val_images": 200, "custom_test_images": 100},
    },
    "train": {**TINY_PARAMS["train"], "epochs": 4, "checkpoint_every": 1},
    "distill": {"rounds": 1, "temperature": 2.0},
}


def test_dvc_repro_distils_a_student_that_predict_uses_then_does_nothing(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path, "seed", DISTILL_PARAMS)
    first = sh(project, "dvc", "repro")
    for stage in ("train", "select", "distill", "predict"):
        assert f"Running stage '{stage}'" in first.stdout
    final = Checkpoint.load(project / "models/final.pt")
    assert final.distillation["teacher_md5"] == calculate_md5(project / "models/best.pt")
    assert calculate_md5(project / "models/final.pt") == calculate_md5(
        project / "models/distill/round_1/best.pt"
    )
    report = json.loads((project / "metrics/predict.json").read_text())
    manifest = json.loads((project / f"submissions/{report['run_id']}.json").read_text())
    assert manifest["used_custom_test_images"] is True
    assert manifest["distillation"]["custom_test_labels"].startswith("none")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "models/final.pt" in {out["path"] for out in lock["distill"]["outs"]}

    second = sh(project, "dvc", "repro")
    assert "Running stage" not in second.stdout


def _states(project: Path) -> list[Path]:
    return list((project / ".resume").glob("train-*/state.pt"))


# the tiny data's epochs take about a second: six of them, so a kill in the third leaves room
KILL_PARAMS = DISTILL_PARAMS | {
    "data": TINY_PARAMS["data"],
    "train": {**DISTILL_PARAMS["train"], "epochs": 6},
}


def test_a_student_killed_mid_training_resumes_to_identical_bytes(tmp_path: Path) -> None:
    base = new_project(tmp_path, "seed", KILL_PARAMS)
    sh(base, "dvc", "repro", "select")  # the teacher, shared by both copies
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(base, reference, symlinks=True)
    shutil.copytree(base, killed, symlinks=True)
    sh(reference, "dvc", "repro")

    run = subprocess.Popen(
        ["dvc", "repro"], cwd=killed, env=tool_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600

    def student_state_after(moment: float) -> float:
        while True:
            assert run.poll() is None and time.monotonic() < deadline, "distill ended early"
            written = [p.stat().st_mtime for p in _states(killed)]
            if written and written[0] > moment:
                return written[0]
            time.sleep(0.01)

    first = student_state_after(0.0)  # the student's epoch 1
    epoch_seconds = student_state_after(first) - first
    time.sleep(random.uniform(0.0, epoch_seconds))  # somewhere in epoch 3 of 6
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "models/distill/round_1/best.pt").exists()

    resumed = sh(killed, "dvc", "repro")
    assert "train: resuming after epoch" in resumed.stderr + resumed.stdout
    for name in ("models/distill/round_1/checkpoints/epoch_0006.pt", "models/final.pt",
                 "submissions/latest.csv"):  # fmt: skip
        assert calculate_md5(killed / name) == calculate_md5(reference / name), name
    assert not _states(killed)
