"""Models, built by name (`model.name`), and the competition's trainable-parameter budget.

`seed_resnet` is the seed team's network, reproduced exactly at the defaults
(base_width 32, blocks [4, 4, 3], dropout 0.17): 1,177,130 trainable parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from pipeline.config import ModelParams
from pipeline.errors import PipelineError
from pipeline.formats import NUM_CLASSES


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-Dropout-conv3×3-BN-Dropout, plus a shortcut (1×1 conv + BN on a shape change), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class SeedResNet(nn.Module):
    """Stem 3×3 conv + BN + ReLU, stages of BasicBlocks doubling width (stride 2 after the first), avg-pool, linear."""

    def __init__(self, base_width: int, blocks: list[int], dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(3, base_width), nn.BatchNorm2d(base_width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_channels = base_width
        for stage, block_count in enumerate(blocks):
            out_channels = base_width * 2**stage
            for index in range(block_count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride, dropout))
                in_channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _seed_resnet(params: ModelParams) -> nn.Module:
    return SeedResNet(params.base_width, list(params.blocks), params.dropout)


MODEL_BUILDERS: dict[str, Callable[[ModelParams], nn.Module]] = {"seed_resnet": _seed_resnet}


def count_trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(params: ModelParams) -> nn.Module:
    """Build `params.name`; refuse it before any training if it is over `params.max_params`."""
    if params.name not in MODEL_BUILDERS:
        raise PipelineError(
            f"params: model.name must be one of {sorted(MODEL_BUILDERS)}, found {params.name!r}"
        )
    model = MODEL_BUILDERS[params.name](params)
    trainable = count_trainable_params(model)
    if trainable > params.max_params:
        raise PipelineError(
            f"params: model '{params.name}' has {trainable:,} trainable parameters, over the "
            f"budget model.max_params = {params.max_params:,}; make it smaller"
        )
    return model


def model_config(params: ModelParams) -> dict:
    """The model's params as plain data, stored in checkpoints to rebuild it later."""
    return dataclasses.asdict(params)
