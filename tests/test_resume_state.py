"""The resume folder stays consistent whatever the moment of a crash (pipeline/records/resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import seed_model, seed_train

from pipeline.engine.loop import fit
from pipeline.engine.models import build_model
from pipeline.engine.trainer import StateMismatch
from pipeline.records import resume
from pipeline.records.checkpoint import save_checkpoint


def _checkpoints(folder: Path, *epochs: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch in epochs:
        save_checkpoint(folder / f"epoch_{epoch:04d}.pt", {"epoch": epoch})
        paths.append(folder / f"epoch_{epoch:04d}.pt")
    return paths


def test_saved_state_comes_back_with_the_checkpoints_it_lists(tmp_path: Path) -> None:
    root, checkpoints = tmp_path / ".resume", _checkpoints(tmp_path / "models", 1, 2)
    resume.save("k", {"epoch": 2, "step": 40}, checkpoints, root)
    for path in checkpoints:  # DVC removes the outputs before the next run
        path.unlink()
    state = resume.load("k", root)
    assert (state["epoch"], state["kept"]) == (2, ["epoch_0001.pt", "epoch_0002.pt"])
    assert [p.name for p in resume.kept_checkpoints("k", root)] == state["kept"]
    assert torch.load(resume.kept_checkpoints("k", root)[1], weights_only=True) == {"epoch": 2}


def test_a_checkpoint_kept_after_the_last_state_is_dropped(tmp_path: Path) -> None:
    """Killed between keeping epoch 3's checkpoint and writing epoch 3's state."""
    root, models = tmp_path / ".resume", tmp_path / "models"
    resume.save("k", {"epoch": 2}, _checkpoints(models, 1, 2), root)
    resume._keep(_checkpoints(models, 3)[0], resume.state_dir("k", root) / "epoch_0003.pt")
    assert resume.load("k", root)["epoch"] == 2
    assert [p.name for p in resume.kept_checkpoints("k", root)] == [
        "epoch_0001.pt",
        "epoch_0002.pt",
    ]


def test_a_rewritten_checkpoint_replaces_the_kept_one(tmp_path: Path) -> None:
    root, models = tmp_path / ".resume", tmp_path / "models"
    resume.save("k", {"epoch": 1}, _checkpoints(models, 1), root)
    save_checkpoint(models / "epoch_0001.pt", {"epoch": 1, "rewritten": True})
    resume.save("k", {"epoch": 1}, [models / "epoch_0001.pt"], root)
    kept = torch.load(resume.kept_checkpoints("k", root)[0], weights_only=True)
    assert kept["rewritten"] is True


@pytest.mark.parametrize("damage", ["unreadable", "listed checkpoint gone"])
def test_an_unusable_state_is_set_aside_and_training_starts_over(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / ".resume"
    resume.save("k", {"epoch": 2}, _checkpoints(tmp_path / "models", 1, 2), root)
    folder = resume.state_dir("k", root)
    if damage == "unreadable":
        (folder / resume.STATE_NAME).write_bytes(b"PK\x03\x04 half a zip")
    else:
        (folder / "epoch_0001.pt").unlink()
    assert resume.load("k", root) is None
    assert not folder.exists() and (root / "unusable-k").is_dir()
    assert "training starts over" in capsys.readouterr().err


def test_a_state_that_does_not_fit_the_model_is_a_mismatch() -> None:
    model = build_model(seed_model(base_width=8, blocks=[1, 1, 1]))
    other = build_model(seed_model(base_width=16, blocks=[1, 1, 1]))
    data = (torch.zeros(10, 3, 32, 32), torch.zeros(10, dtype=torch.long))
    with pytest.raises(StateMismatch, match="size mismatch"):
        fit(model, seed_train(device="cpu", epochs=1, batch_size=5), data, data,
            ([0.5] * 3, [0.25] * 3), lambda *_: None,
            resume_state={"model": other.state_dict()})  # fmt: skip
