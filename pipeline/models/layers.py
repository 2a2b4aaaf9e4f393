"""Layers more than one model family uses."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class GlobalMeanPool(nn.Module):
    """(N, C, H, W) → (N, C, 1, 1), the mean over the map. Not AdaptiveAvgPool2d: its CUDA
    backward has no deterministic kernel, so `train.deterministic` would refuse it; a mean's
    backward spreads the gradient evenly and is deterministic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)
