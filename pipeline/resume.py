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
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torchvision.datasets.utils import calculate_md5

from pipeline.config import ModelParams, TrainParams
from pipeline.files import atomic_path
from pipeline.reporting import console

RESUME_ROOT = Path(".resume")
STATE_NAME = "state.pt"
KEY_LENGTH = 16  # hex characters of the sha256


def run_key(
    model_params: ModelParams, params: TrainParams, prepared_dir: Path,
    dvc_yaml: Path = Path("dvc.yaml"),
) -> str:  # fmt: skip
    """Digest of what the run's result depends on; `train.device` is part of `params`."""
    code = []
    if dvc_yaml.exists():
        deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["train"].get("deps", [])
        code = sorted(dep for dep in deps if dep.endswith(".py") and Path(dep).exists())
    identity = {
        "model": dataclasses.asdict(model_params),
        "train": dataclasses.asdict(params),
        "data": {
            p.name: calculate_md5(p) for p in sorted(Path(prepared_dir).glob("*")) if p.is_file()
        },
        "code": {name: calculate_md5(Path(name)) for name in code},
        "torch": torch.__version__,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def state_dir(key: str, root: Path = RESUME_ROOT) -> Path:
    return root / f"train-{key}"


def random_states() -> dict[str, Any]:
    """The global generators' states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load(key: str, root: Path = RESUME_ROOT) -> dict[str, Any] | None:
    """The saved state of run `key`, or None (none saved, or unreadable: then set aside)."""
    path = state_dir(key, root) / STATE_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable state means: start over
        aside = path.with_suffix(".unreadable")
        os.replace(path, aside)
        console.print(
            f"[yellow]warning: {path}: unreadable resume state ({type(error).__name__}); "
            f"moved to {aside.name}, training starts over"
        )
        return None


def save(
    key: str, state: dict[str, Any], checkpoints: list[Path], root: Path = RESUME_ROOT
) -> None:
    """Keep links to `checkpoints`, then write `state` (atomically, so it is whole or absent)."""
    folder = state_dir(key, root)
    folder.mkdir(parents=True, exist_ok=True)
    for checkpoint in checkpoints:
        kept = folder / checkpoint.name
        if not kept.exists():
            try:
                os.link(checkpoint, kept)  # no copy: DVC only ever unlinks the original
            except OSError:  # another file system, or no hard links there
                shutil.copy2(checkpoint, kept)
    with atomic_path(folder / STATE_NAME) as temp_path, temp_path.open("wb") as handle:
        torch.save(state, handle)


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
