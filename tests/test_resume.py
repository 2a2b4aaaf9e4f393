"""A training run killed at a random step resumes on the next `dvc repro` and ends as if never killed."""

from __future__ import annotations

from pathlib import Path

import pytest
from projects import (
    TINY_PARAMS,
    copy_project,
    kill_repro_in_third_epoch,
    new_project,
    resume_states,
    sh,
)
from torchvision.datasets.utils import calculate_md5

pytestmark = pytest.mark.slow
# seed_resnet with dropout (the global generator matters) and EMA; a checkpoint every epoch
KILL_PARAMS = TINY_PARAMS | {
    "model": {**TINY_PARAMS["model"], "dropout": 0.1},
    "train": {**TINY_PARAMS["train"], "epochs": 6, "checkpoint_every": 1, "ema_decay": 0.9},
}


def test_training_killed_at_a_random_step_resumes_to_identical_weights_and_csv(
    tmp_path: Path,
) -> None:
    base = new_project(tmp_path, "seed", KILL_PARAMS)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    copy_project(base, reference)
    copy_project(base, killed)
    sh(reference, "dvc", "repro")
    assert not resume_states(reference)  # cleaned on success

    delay = kill_repro_in_third_epoch(killed)  # of 6
    assert not (killed / "models/checkpoints/epoch_0006.pt").exists()  # killed mid-training

    resumed = sh(killed, "dvc", "repro")
    assert "train: resuming after epoch" in resumed.stderr + resumed.stdout, f"delay {delay:.2f} s"
    last = "models/checkpoints/epoch_0006.pt"
    assert (killed / last).read_bytes() == (reference / last).read_bytes(), f"delay {delay:.2f} s"
    assert calculate_md5(killed / "submissions/latest.csv") == calculate_md5(
        reference / "submissions/latest.csv"
    )
    assert sorted(p.name for p in (killed / "models/checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "models/checkpoints").iterdir()
    )  # the checkpoints written before the kill came back for select
    assert not resume_states(killed)  # cleaned after success
