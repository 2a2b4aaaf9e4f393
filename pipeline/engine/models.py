"""A model built from its config (pipeline/models/ defines each, by name), counted against the
competition's trainable-parameter budget; ensembles of models."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.registry import ModelConfig, model_entry


def count_trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_model_params(params: ModelConfig) -> int:
    """`params`'s trainable parameters, counted on PyTorch's meta device: shapes without memory,
    so a checkpoint's config of any size is counted before anything is allocated."""
    with torch.device("meta"):
        return count_trainable_params(_build(params))


def _build(params: ModelConfig) -> nn.Module:
    model = model_entry(params.name).build(params)
    if not isinstance(model, nn.Module):
        source = model_entry(params.name).source
        raise PipelineError(
            f"{source}: model '{params.name}' was built as a {type(model).__name__}, not an "
            "nn.Module (register the nn.Module class, or a function that returns one)"
        )
    return model


def check_budget(params: ModelConfig) -> int:
    """`params`'s trainable parameters, refused over `params.max_params` (nothing allocated)."""
    trainable = count_model_params(params)
    if trainable > params.max_params:
        raise PipelineError(
            f"params: model '{params.name}' has {trainable:,} trainable parameters, over the "
            f"budget model.max_params = {params.max_params:,}; make it smaller"
        )
    return trainable


def build_model(params: ModelConfig) -> nn.Module:
    """Build `params.name`; refuse it, before allocating it, if it is over `params.max_params`."""
    check_budget(params)
    return _build(params)


def check_ensemble_budget(parts: list[tuple[str, int]], max_params: int, remedy: str) -> int:
    """The total trainable parameters of an ensemble's (name, count) parts, refused over budget."""
    total = sum(count for _, count in parts)
    if total > max_params:
        listed = " + ".join(f"{name} {count:,}" for name, count in parts)
        raise PipelineError(
            f"ensemble over budget: {listed} = {total:,} trainable parameters, over "
            f"model.max_params = {max_params:,}; {remedy}"
        )
    return total


class Ensemble(nn.Module):
    """Models whose logits are averaged (in float32): a seed ensemble that select chose.

    Its trainable parameters are all of its members' together, so the budget covers the whole.
    Averaging commutes with TTA's weighted view average, so TTA applies to it as to one model.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(0)


def model_config(params: ModelConfig) -> dict:
    """The model's params as plain data, stored in checkpoints to rebuild it later."""
    return dataclasses.asdict(params)
