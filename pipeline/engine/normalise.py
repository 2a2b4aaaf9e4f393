"""Normalisation: uint8 images → normalised float tensors on the device, once per split.

Train, select and predict all put images on their device through these functions, with the
training set's per-channel mean/std (dataset.json, stored again in each checkpoint).
"""

from __future__ import annotations

import numpy as np
import torch


def pixel_statistics(
    mean: list[float], std: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in 0..255 pixel units, shaped (1, 3, 1, 1) for broadcasting."""
    return (
        torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0,
        torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0,
    )


def to_device_tensor(
    images: np.ndarray, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 → normalised float32 (N, 3, 32, 32) in channels_last memory on `device`."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    pixel_mean, pixel_std = pixel_statistics(mean, std, device)
    return ((pixels - pixel_mean) / pixel_std).contiguous(memory_format=torch.channels_last)


def to_device_set(
    images: np.ndarray,
    labels: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled split on `device`: normalised images as above and int64 labels."""
    return to_device_tensor(images, mean, std, device), torch.from_numpy(labels).to(device)
