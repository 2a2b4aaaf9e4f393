"""A training run killed at a random step resumes on the next `dvc repro` and ends as if never killed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from projects import TINY_PARAMS, new_project, sh, tool_env
from torchvision.datasets.utils import calculate_md5

pytestmark = pytest.mark.slow
# seed_resnet with dropout (the global generator matters) and EMA; a checkpoint every epoch
KILL_PARAMS = TINY_PARAMS | {
    "model": {**TINY_PARAMS["model"], "dropout": 0.1},
    "train": {**TINY_PARAMS["train"], "epochs": 8, "checkpoint_every": 1, "ema_decay": 0.9},
}


def _states(project: Path) -> list[Path]:
    return list((project / ".resume").glob("train-*/state.pt"))


def test_training_killed_at_a_random_step_resumes_to_identical_weights_and_csv(
    tmp_path: Path,
) -> None:
    base = new_project(tmp_path, "seed", KILL_PARAMS)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(base, reference, symlinks=True)
    shutil.copytree(base, killed, symlinks=True)
    sh(reference, "dvc", "repro")
    assert not (reference / ".resume").exists() or not _states(reference)  # cleaned on success

    env = tool_env()
    run = subprocess.Popen(
        ["dvc", "repro"], cwd=killed, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600

    def state_written_after(moment: float) -> float:
        """Wait for a state newer than `moment`; return when it was written."""
        while True:
            assert run.poll() is None and time.monotonic() < deadline, "training ended early"
            written = [p.stat().st_mtime for p in _states(killed)]
            if written and written[0] > moment:
                return written[0]
            time.sleep(0.01)

    first = state_written_after(0.0)  # epoch 1's state: training is under way
    epoch_seconds = state_written_after(first) - first  # epoch 2's: how long an epoch takes
    delay = random.uniform(0.0, epoch_seconds)  # into epoch 3 of 8: a random step
    time.sleep(delay)
    os.killpg(run.pid, signal.SIGKILL)  # dvc and the stage it runs, as a crash would
    run.wait()
    assert not (killed / "models/checkpoints/epoch_0008.pt").exists()  # killed mid-training

    resumed = sh(killed, "dvc", "repro")
    assert "train: resuming after epoch" in resumed.stderr + resumed.stdout, f"delay {delay:.2f} s"
    last = "models/checkpoints/epoch_0008.pt"
    assert (killed / last).read_bytes() == (reference / last).read_bytes(), f"delay {delay:.2f} s"
    assert calculate_md5(killed / "submissions/latest.csv") == calculate_md5(
        reference / "submissions/latest.csv"
    )
    assert sorted(p.name for p in (killed / "models/checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "models/checkpoints").iterdir()
    )  # the checkpoints written before the kill came back for select
    assert not _states(killed)  # cleaned after success
