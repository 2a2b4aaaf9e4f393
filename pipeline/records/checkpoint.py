"""Checkpoint files: written atomically, read only with `torch.load(weights_only=True)`.

A checkpoint is a dict of plain data and tensors: `model_state`, `model_config` (the model's
params, to rebuild it by name), `epoch`, `val_accuracy`, `model_params` (trainable count),
`normalization` (the training set's mean/std) and `class_names`; training also stores `ema_state`
and `val_accuracy_ema` (None without EMA), and select's models/best.pt says which `weights`
(raw or ema) its `model_state` holds. When select chose a seed ensemble, best.pt also holds
`ensemble`: one entry per other member (`name`, `source`, `md5` of its file, `model_config`,
`model_state`, `model_params`), whose logits are averaged with its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config.params import ModelParams
from pipeline.engine.models import (
    Ensemble,
    build_model,
    check_ensemble_budget,
    count_trainable_params,
)
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

REQUIRED_KEYS = ("model_state", "model_config", "epoch", "val_accuracy", "normalization")


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` whole or not at all; the same content gives the same bytes.

    torch.save names the zip's top folder after the file it is given; saving through an open
    handle keeps that name fixed ("archive") instead of the random temporary name, so DVC's md5
    of a checkpoint depends on its content only.
    """
    try:
        with atomic_path(path) as temp_path, temp_path.open("wb") as handle:
            torch.save(checkpoint, handle)
    except OSError as error:  # a full disk, a lost mount: the earlier checkpoints stay as they were
        raise PipelineError(
            f"{path}: could not write the checkpoint ({error.strerror or error}); earlier "
            "checkpoints are intact"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; check its keys."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found; run the train stage first") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PipelineError(
            f"{path}: corrupt or unsafe checkpoint ({type(error).__name__}: {first_line})"
        ) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise PipelineError(
            f"{path}: not a pipeline checkpoint (expected keys {list(REQUIRED_KEYS)})"
        )
    return checkpoint


def model_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the checkpoint's model by name (budget checked again) and load its weights.

    A checkpoint with `ensemble` members gives an `Ensemble` of its own model and theirs, with
    the budget checked over all of them against its own `model.max_params`.
    """
    model = _single_model(path, checkpoint["model_config"], checkpoint["model_state"])
    members = checkpoint.get("ensemble") or []
    if not members:
        return model
    parts = [(f"{checkpoint['model_config'].get('name')}", count_trainable_params(model))]
    models = [model]
    for number, member in enumerate(members, start=1):
        if (
            not isinstance(member, dict)
            or "model_config" not in member
            or "model_state" not in member
        ):
            raise PipelineError(
                f"{path}: ensemble member {number} lacks model_config or model_state"
            )
        where = f"{path} (ensemble member {member.get('name', number)})"
        models.append(_single_model(where, member["model_config"], member["model_state"]))
        parts.append((str(member.get("name", number)), count_trainable_params(models[-1])))
    check_ensemble_budget(
        parts, checkpoint["model_config"].get("max_params", 0), f"{path} cannot be used"
    )
    return Ensemble(models)


def _single_model(where: object, config: dict, state: dict) -> nn.Module:
    try:
        params = ModelParams(**config)
    except TypeError as error:
        raise PipelineError(f"{where}: checkpoint's model_config is not valid ({error})") from None
    model = build_model(params)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise PipelineError(
            f"{where}: weights do not fit model '{params.name}' ({first_line})"
        ) from None
    return model
