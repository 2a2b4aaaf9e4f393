"""Normalisation: uint8 images → normalised float tensors on the device, once per split.

Train, select and predict all put images on their device through these functions, with the
training set's per-channel mean/std (dataset.json, stored again in each checkpoint). With
`train.images_on_device: uint8` the training set stays uint8 there and each batch is normalised
as it is drawn (engine/augment.py's `augment_batch`), to the same float32 values.
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


def to_device_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 → uint8 (N, 3, 32, 32) in channels_last memory on `device`."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return pixels.contiguous(memory_format=torch.channels_last)


def normalised(
    pixels: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32 (pixels − mean) / std, `pixel_statistics`' units: the same
    values whether a whole split is normalised at once or each batch as it is used."""
    return ((pixels.float() - pixel_mean) / pixel_std).contiguous(memory_format=torch.channels_last)


def to_device_tensor(
    images: np.ndarray, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 → normalised float32 (N, 3, 32, 32) in channels_last memory on `device`."""
    return normalised(to_device_pixels(images, device), *pixel_statistics(mean, std, device))


def to_device_set(
    images: np.ndarray,
    labels: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
    as_pixels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled split on `device`: normalised images as above (uint8 pixels if `as_pixels`:
    a quarter of the memory, normalised batch by batch in training) and int64 labels."""
    tensor = (
        to_device_pixels(images, device)
        if as_pixels
        else to_device_tensor(images, mean, std, device)
    )
    return tensor, torch.from_numpy(labels).to(device)
