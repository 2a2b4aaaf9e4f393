"""Distillation as a user runs it: `dvc repro` with a student, a second repro that does nothing,
and a student killed mid-training that resumes to the same bytes (one test: the runs are shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from projects import (
    TINY_PARAMS,
    copy_project,
    kill_repro_in_third_epoch,
    new_project,
    resume_states,
    sh,
)
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


# the tiny data's epochs take about a second: six of them, so a kill in the third leaves room
KILL_PARAMS = DISTILL_PARAMS | {
    "data": TINY_PARAMS["data"],
    "train": {**DISTILL_PARAMS["train"], "epochs": 6},
}


def check_distilled_run(project: Path, output: str) -> None:
    """distill ran, final.pt is its student taught by best.pt, predict used it, DVC knows it."""
    for stage in ("distill", "predict"):
        assert f"Running stage '{stage}'" in output
    final = Checkpoint.load(project / "models/final.pt")
    assert final.distillation["teacher_md5"] == calculate_md5(project / "models/best.pt")
    assert calculate_md5(project / "models/final.pt") == calculate_md5(
        project / "models/distill/round_1/best.pt"
    )
    report = json.loads((project / "metrics/predict.json").read_text())
    manifest = json.loads((project / "submissions/latest.json").read_text())
    assert manifest["run_id"] == report["run_id"]
    assert manifest["used_custom_test_images"] is True
    assert manifest["distillation"]["custom_test_labels"].startswith("none")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "models/final.pt" in {out["path"] for out in lock["distill"]["outs"]}


def test_dvc_repro_distils_a_student_and_a_killed_student_resumes_to_identical_bytes(
    tmp_path: Path,
) -> None:
    """One `dvc repro` runs teacher and student, a second does nothing; a copy killed during
    the student's training resumes to the same bytes."""
    base = new_project(tmp_path, "seed", KILL_PARAMS)
    teacher = sh(base, "dvc", "repro", "select")  # the teacher, shared by both copies
    assert "Running stage 'train'" in teacher.stdout
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    copy_project(base, reference)
    copy_project(base, killed)
    check_distilled_run(reference, sh(reference, "dvc", "repro").stdout)
    assert "Running stage" not in sh(reference, "dvc", "repro").stdout

    kill_repro_in_third_epoch(killed)  # the student's, of 6
    assert not (killed / "models/distill/round_1/best.pt").exists()

    resumed = sh(killed, "dvc", "repro")
    assert "train: resuming after epoch" in resumed.stderr + resumed.stdout
    for name in ("models/distill/round_1/checkpoints/epoch_0006.pt", "models/final.pt",
                 "submissions/latest.csv"):  # fmt: skip
        assert calculate_md5(killed / name) == calculate_md5(reference / name), name
    assert not resume_states(killed)
