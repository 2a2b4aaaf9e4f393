"""A training run killed at a random step resumes on the next `dvc repro` and ends as if never killed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_training_killed_at_a_random_step_resumes_to_identical_weights_and_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/gpu_pipeline.py's dry run, the scenario it measures on a GPU: a reference
    `dvc repro`, and a copy SIGKILLed at a random step of training's third epoch (of 6), then
    `dvc repro` again: it resumes, and its checkpoints and CSV are the reference's bytes."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import gpu_pipeline

    figures_path = tmp_path / "figures.json"
    status = gpu_pipeline.main(
        ["--dry-run", "--workdir", str(tmp_path), "--json", str(figures_path)]
    )
    figures = json.loads(figures_path.read_text())
    delay = f"killed {figures['killed_after_seconds_into_epoch_3']:.2f} s into epoch 3"
    assert figures["killed_mid_training"], delay  # the last checkpoint was not written yet
    assert figures["resumed"], delay  # "train: resuming after epoch" on the second repro
    assert figures["last_checkpoint"] == "models/checkpoints/epoch_0006.pt"
    assert figures["last_checkpoint_identical"], delay
    assert figures["csv_md5_resumed"] == figures["csv_md5_reference"], delay
    assert figures["same_checkpoints"], delay  # those written before the kill came back
    assert not figures["resume_state_left"]  # cleaned after success, in both projects
    assert status == 0 and figures["identical"]


def test_sigterm_to_dvc_alone_stops_its_stage_and_the_next_repro_finishes(tmp_path: Path) -> None:
    """An HPC scheduler's (or `timeout`'s) SIGTERM reaches `dvc repro` only: the training it
    ran used to go on as an orphan, and the next `dvc repro` trained beside it in the same
    folders, ending with epochs missing from models/checkpoints."""
    import os
    import signal
    import subprocess
    import time

    import psutil
    from projects import TINY_PARAMS, new_project, resume_states, sh, tool_env

    epochs = 30  # long enough to be stopped mid-run (tiny epochs take a fraction of a second)
    train = {**TINY_PARAMS["train"], "epochs": epochs, "checkpoint_every": 5}
    project = new_project(tmp_path, "seed", TINY_PARAMS | {"train": train})
    log = (tmp_path / "repro.log").open("w")
    dvc = subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=tool_env(), start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not resume_states(project):  # an epoch is done: training is under way
        assert dvc.poll() is None and time.monotonic() < deadline, "training ended early"
        time.sleep(0.05)
    os.kill(dvc.pid, signal.SIGTERM)  # DVC alone, not its process group
    dvc.wait(timeout=60)

    def stage_processes() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline", "cwd"]):
            command, cwd = process.info["cmdline"] or [], process.info["cwd"]
            if cwd == str(project) and "pipeline" in command and "train" in command:
                found.append(process)
        return found

    while stage_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = stage_processes()
    for process in left:
        process.kill()
    assert left == [], "the train stage outlived the dvc repro that ran it"
    said = (tmp_path / "repro.log").read_text()
    assert "train: stopping, as the dvc repro that ran it has stopped" in said, said
    assert not (project / "models/checkpoints/epoch_0030.pt").exists()  # stopped mid-run

    rerun = sh(project, "dvc", "repro")
    again = rerun.stdout + rerun.stderr
    assert "train: resuming after epoch" in again, again
    checkpoints = sorted(path.name for path in (project / "models/checkpoints").iterdir())
    assert checkpoints == [f"epoch_{epoch:04d}.pt" for epoch in range(5, epochs + 1, 5)]
