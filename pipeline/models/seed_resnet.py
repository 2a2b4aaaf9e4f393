"""`seed_resnet`: the seed team's network, reproduced exactly at the defaults (base_width 32,
blocks [4, 4, 3], dropout 0.17): 1,177,130 trainable parameters. Residual."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.checks import MAX_CHANNELS, require, require_blocks, require_range
from pipeline.models.layers import GlobalMeanPool, conv3x3
from pipeline.models.registry import ModelConfig, register_model


@dataclass(frozen=True)
class SeedResNetConfig(ModelConfig):
    base_width: int = 32  # channels of the first stage (32 → 64 → 128)
    blocks: list[int] = field(default_factory=lambda: [4, 4, 3])  # residual blocks per stage
    dropout: float = 0.17  # inside each residual block

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range(self.base_width, "model.base_width", 1, MAX_CHANNELS)
        require_blocks(self.blocks, "model.blocks")
        require(0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)", self.dropout)


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
        self.pool = GlobalMeanPool()
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


@register_model("seed_resnet", SeedResNetConfig, residual=True)
def build_seed_resnet(config: SeedResNetConfig) -> SeedResNet:
    return SeedResNet(config.base_width, list(config.blocks), config.dropout)
