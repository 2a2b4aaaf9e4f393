"""Device-side data: normalisation once, then batched random crop and flip on the device.

No per-image PIL work: a whole batch is padded once and cropped with two gathers, so the data
never leaves the training device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_device_tensor(
    images: np.ndarray, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 → normalised float32 (N, 3, 32, 32) in channels_last memory on `device`."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    return ((pixels - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


def to_device_set(
    images: np.ndarray,
    labels: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled split on `device`: normalised images as above and int64 labels."""
    return to_device_tensor(images, mean, std, device), torch.from_numpy(labels).to(device)


def random_crop(
    images: torch.Tensor, padding: int, pad_mode: str, generator: torch.Generator
) -> torch.Tensor:
    """Pad each (N, C, H, W) image by `padding` pixels and take a random H×W window of it."""
    if padding == 0:
        return images
    count, channels, height, width = images.shape
    mode = "constant" if pad_mode == "zeros" else "reflect"
    padded = F.pad(images, (padding,) * 4, mode=mode)
    offsets = torch.randint(
        0, 2 * padding + 1, (2, count), device=images.device, generator=generator
    )
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # (N, W)
    padded_width = width + 2 * padding
    row_index = rows[:, None, :, None].expand(count, channels, height, padded_width)
    cropped_rows = padded.gather(2, row_index)
    col_index = cols[:, None, None, :].expand(count, channels, height, width)
    return cropped_rows.gather(3, col_index)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment_batch(
    images: torch.Tensor, padding: int, pad_mode: str, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    images = random_crop(images, padding, pad_mode, generator)
    if flip:
        images = random_flip(images, generator)
    return images.contiguous(memory_format=torch.channels_last)
