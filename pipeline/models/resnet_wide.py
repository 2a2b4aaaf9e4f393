"""`resnet_wide`: a pre-activation wide ResNet (WRN) sized by `widths` and `blocks`; widths
[64, 128, 256], blocks [2, 2, 2] is WRN-16-4: 2,776,906 trainable parameters. Residual."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.checks import require, require_blocks, require_channels
from pipeline.models.layers import GlobalMeanPool, conv3x3
from pipeline.models.registry import ModelConfig, register_model


@dataclass(frozen=True)
class WideResNetConfig(ModelConfig):
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])  # channels per stage
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2])  # residual blocks per stage
    dropout: float = 0.0  # inside each residual block

    def __post_init__(self) -> None:
        super().__post_init__()
        require_channels(self.widths, "model.widths")
        require_blocks(self.blocks, "model.blocks")
        require(
            len(self.blocks) == len(self.widths), "model.blocks",
            f"one block count per width ({len(self.widths)}) for resnet_wide", self.blocks,
        )  # fmt: skip
        require(0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)", self.dropout)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-Dropout-conv3×3, plus the input (1×1 conv of the pre-activation on a shape change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            conv3x3(out_channels, out_channels),
        )
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre(x)
        shortcut = self.shortcut(activated) if self.shortcut is not None else x
        return self.residual(activated) + shortcut


class WideResNet(nn.Module):
    """Stem conv3×3 → stages of pre-activation blocks (stride 2 after the first) → BN-ReLU → avg-pool → linear."""

    def __init__(self, widths: list[int], blocks: list[int], dropout: float) -> None:
        super().__init__()
        self.stem = conv3x3(3, widths[0])
        layers: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (width, block_count) in enumerate(zip(widths, blocks, strict=True)):
            for index in range(block_count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(PreActBlock(in_channels, width, stride, dropout))
                in_channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), GlobalMeanPool()
        )
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.head(self.stages(self.stem(x))), 1))


# pre-activation blocks add conv outputs unnormalised: Muon's fixed filter norms would change them
@register_model("resnet_wide", WideResNetConfig, residual=True, muon_compatible=False)
def build_resnet_wide(config: WideResNetConfig) -> WideResNet:
    return WideResNet(list(config.widths), list(config.blocks), config.dropout)
