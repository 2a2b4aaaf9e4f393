"""Scratch projects for the end-to-end tests and bench/gpu_pipeline.py: a copy of the repository
as a fresh git + DVC project, as a user's clone."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config.load import override_params_file

REPO_ROOT = Path(__file__).resolve().parents[1]

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
    # the tests of the other stages skip the student (tests/test_distill_end_to_end.py runs it)
    "distill": {"rounds": 0},
}
TWO_EPOCH_PARAMS = TINY_PARAMS | {"train": {**TINY_PARAMS["train"], "epochs": 2}}


def copy_project(project: Path, destination: Path) -> Path:
    """A copy of a scratch project (its git history and DVC cache too) at `destination`."""
    shutil.copytree(project, destination, symlinks=True)
    return destination


def copy_repo(destination: Path) -> None:
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


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's folder first on PATH (its dvc, its python)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_tool(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` in `folder` with this interpreter's tools first on PATH; its output captured."""
    env = tool_env()
    env.pop("PYTHONPATH", None)
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def sh(folder: Path, *command: str) -> subprocess.CompletedProcess:
    result = run_tool(folder, *command)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def override(project: Path, overrides: dict) -> None:
    override_params_file(project / "params.yaml", overrides)


def new_project(tmp_path: Path, profile: str, overrides: dict) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    copy_repo(project)
    sh(project, sys.executable, "-m", "pipeline", "profile", profile)
    override(project, overrides)
    sh(project, "git", "init", "-q")
    if not (project / ".dvc").is_dir():
        sh(project, "dvc", "init", "-q")
    # A clone has commits; dvclive needs one (it records the baseline revision).
    commit_all(project, "copy")
    return project


def commit_all(project: Path, message: str) -> None:
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def resume_states(project: Path) -> list[Path]:
    """The training state files a killed run resumes from (train's and the students')."""
    return list((project / ".resume").glob("train-*/state.pt"))


def kill_repro_in_third_epoch(project: Path) -> float:
    """Start `dvc repro` in `project` and SIGKILL it (dvc and its stage, as a crash would) at a
    random moment of the third epoch of the first training that writes a resume state; the
    delay after epoch 2's state, in seconds. Its epochs must last long enough to measure."""
    run = subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=tool_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600

    def state_written_after(moment: float) -> float:
        """Wait for a state newer than `moment`; return when it was written."""
        while True:
            assert run.poll() is None and time.monotonic() < deadline, "training ended early"
            written = [p.stat().st_mtime for p in resume_states(project)]
            if written and written[0] > moment:
                return written[0]
            time.sleep(0.01)

    first = state_written_after(0.0)  # epoch 1's state: training is under way
    epoch_seconds = state_written_after(first) - first  # epoch 2's: how long an epoch takes
    delay = random.uniform(0.0, epoch_seconds)  # into epoch 3: a random step
    time.sleep(delay)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    return delay
