"""Reading the prepared data (written by the prepare stage) for train, select and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.errors import PipelineError


def load_split(prepared_dir: Path, split: str) -> dict[str, np.ndarray]:
    """One prepared split (train, val, custom_test) as a dict of arrays (images, labels or ids)."""
    path = Path(prepared_dir) / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the prepare stage first") from None
    except (ValueError, OSError) as error:
        raise PipelineError(f"{path}: unreadable prepared array ({error}); rerun prepare") from None


def load_dataset_info(prepared_dir: Path) -> dict:
    """`dataset.json`: class names and the training set's per-channel mean/std (0–1 scale)."""
    path = Path(prepared_dir) / "dataset.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the prepare stage first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not valid JSON ({error}); rerun prepare") from None
    # prepare demands these of batches.meta; checkpoints carry them on to plots and manifests
    if not isinstance(info, dict) or info.get("class_names") != CIFAR10_CLASS_NAMES:
        raise PipelineError(
            f"{path}: class_names are not CIFAR-10's in label order (not shown); rerun prepare "
            "(`dvc repro prepare --force`)"
        )
    return info
