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
