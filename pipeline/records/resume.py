"""Resume state for the train stage: a killed run continues from its last checkpoint.

At every checkpoint epoch, train also writes the whole training state (weights, EMA, Lookahead's
average, optimizer and scheduler, every random generator: python, numpy, torch CPU and CUDA, the
data-order and augmentation generators, the epoch and step, and the metrics logged so far) to
`.resume/train-<key>/state.pt`, with hard links to the checkpoints written so far. It lives
outside DVC's outputs because DVC deletes a stage's outputs before running it, and it is
git-ignored. `<key>` digests the run's inputs (the model and train params, the prepared data
files, train's code files listed in dvc.yaml), so a changed config never resumes a stale run:
other keys' folders are removed when a new run starts, and the run's own when it succeeds.
The state is read with `torch.load(weights_only=True)`; an unreadable one is set aside with a
warning and the run starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config.params import TrainParams
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, file_md5
from pipeline.integrations.repository import stage_code_md5s
from pipeline.models.registry import ModelConfig
from pipeline.records.checkpoint import save_checkpoint
from pipeline.reporting import warn

RESUME_ROOT = Path(".resume")
STATE_NAME = "state.pt"
KEY_LENGTH = 16  # hex characters of the sha256


def run_key(
    model_params: ModelConfig, params: TrainParams, prepared_dir: Path, device: torch.device,
    dvc_yaml: Path = Path("dvc.yaml"), stage: str = "train", extra: dict | None = None,
) -> str:  # fmt: skip
    """Digest of what the run's bits depend on: params, data, code (`stage`'s files in
    dvc.yaml), the device actually used (`auto` resolved: a CUDA run never resumes on CPU),
    and what changes float sums on it: the thread count, the CPU's vector instructions, the
    GPU, and the libraries' versions. `extra`: more inputs (a student's teacher and round)."""
    identity = {
        "model": dataclasses.asdict(model_params),
        "train": dataclasses.asdict(params),
        "data": {p.name: file_md5(p) for p in sorted(Path(prepared_dir).glob("*")) if p.is_file()},
        "code": stage_code_md5s(stage, dvc_yaml),
        "extra": extra,
        # the type, not the index: every rank of a data-parallel run computes the same key
        "device": device.type
        + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        # from the installed metadata: importing timm (torchvision, dynamo) costs seconds a run
        "versions": [
            torch.__version__,
            *map(installed_version, ("torchvision", "timm")),
            np.__version__,
        ],
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def state_dir(key: str, root: Path = RESUME_ROOT) -> Path:
    return root / f"train-{key}"


def set_aside(key: str, reason: str, root: Path = RESUME_ROOT) -> None:
    """Move run `key`'s folder out of the way (kept for a look, never resumed) and say why."""
    folder = state_dir(key, root)
    if folder.exists():
        aside = folder.with_name(folder.name.replace("train-", "unusable-", 1))
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
        warn(f"{folder}: {reason}; moved to {aside}, training starts over")


def load(key: str, root: Path = RESUME_ROOT) -> dict[str, Any] | None:
    """The saved state of run `key`, or None (none saved, or unusable: then set aside).

    Checkpoints the state does not list (linked by a run killed before it wrote the state)
    are removed; a listed one that is missing makes the state unusable.
    """
    folder = state_dir(key, root)
    path = folder / STATE_NAME
    if not path.exists():
        shutil.rmtree(folder, ignore_errors=True)  # links of a run killed before its first state
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        kept = set(state["kept"])
    except Exception as error:  # noqa: BLE001 - any unreadable state means: start over
        set_aside(key, f"unreadable resume state ({type(error).__name__})", root)
        return None
    missing = sorted(kept - {p.name for p in folder.glob("epoch_*.pt")})
    if missing:
        set_aside(key, f"resume state lists checkpoints that are gone ({', '.join(missing)})", root)
        return None
    for extra in folder.glob("epoch_*.pt"):
        if extra.name not in kept:
            extra.unlink()
    return state


def _keep(checkpoint: Path, kept: Path) -> None:
    """`kept` becomes `checkpoint`'s content, whole or not at all (link, else copy; then rename)."""
    with atomic_path(kept) as temp_path:
        temp_path.unlink()
        try:
            os.link(checkpoint, temp_path)  # no copy: DVC only ever unlinks the original
        except OSError:  # another file system, or no hard links there
            shutil.copy2(checkpoint, temp_path)


def save(
    key: str, state: dict[str, Any], checkpoints: list[Path], root: Path = RESUME_ROOT
) -> None:
    """Keep `checkpoints` (their current content), then write `state` listing them.

    The state is written last and atomically: whatever the moment of a crash, the state on disk
    lists only checkpoints kept whole. A full disk is one-line error (save_checkpoint's).
    """
    folder = state_dir(key, root)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for checkpoint in checkpoints:
            _keep(checkpoint, folder / checkpoint.name)
    except OSError as error:
        raise PipelineError(
            f"{folder}: could not keep the resume state ({error.strerror or error})"
        ) from None
    save_checkpoint(folder / STATE_NAME, state | {"kept": [c.name for c in checkpoints]})


def kept_checkpoints(key: str, root: Path = RESUME_ROOT) -> list[Path]:
    return sorted(state_dir(key, root).glob("epoch_*.pt"))


def clear(key: str | None = None, keep: str | None = None, root: Path = RESUME_ROOT) -> None:
    """Remove run `key`'s folder, or (key None) every run's folder except `keep`'s."""
    if not root.exists():
        return
    for folder in root.glob("train-*"):
        if (key is not None and folder.name == f"train-{key}") or (
            key is None and folder.name != f"train-{keep}"
        ):
            shutil.rmtree(folder, ignore_errors=True)
