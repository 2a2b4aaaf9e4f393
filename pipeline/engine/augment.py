"""Batched training augmentation on the device (the images come normalised: normalise.py).

No per-image PIL work: a whole batch is padded once and cropped with two gathers, flipped with
one `where`, cut out with one mask, so the data never leaves the training device. Mixing
(mixup / cutmix) returns soft targets; the augment policy (TrivialAugment, AutoAugment,
RandAugment) is the one per-group (not per-batch) step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config.params import TrainParams
from pipeline.engine.normalise import normalised, pixel_statistics


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


def alternating_flip_mask(
    first_epoch_mask: torch.Tensor, indices: torch.Tensor, epoch: int
) -> torch.Tensor:
    """Which images of a batch to mirror in `epoch` (1-based) under alternating flip.

    `first_epoch_mask` (one bool per training image, drawn once at random) is epoch 1's choice;
    each later epoch inverts the previous one, so every image is seen mirrored every other epoch
    (airbench's trick: the flip never repeats, unlike a fresh coin per epoch).
    """
    mask = first_epoch_mask[indices]
    return mask if epoch % 2 == 1 else ~mask


def apply_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose `mask` entry is True."""
    return torch.where(mask[:, None, None, None], images.flip(3), images)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return apply_flip(images, flip)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) centred at a random pixel of each image."""
    count, _, height, width = images.shape
    centres = torch.randint(0, height * width, (count,), device=images.device, generator=generator)
    rows, cols = centres // width, centres % width
    top, left = rows - size // 2, cols - size // 2
    row_range = torch.arange(height, device=images.device)
    col_range = torch.arange(width, device=images.device)
    inside_rows = (row_range >= top[:, None]) & (row_range < top[:, None] + size)  # (N, H)
    inside_cols = (col_range >= left[:, None]) & (col_range < left[:, None] + size)  # (N, W)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])
    return images * keep[:, None].to(images.dtype)


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: torch.Generator,
    host_generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (half the batches each when both are on) with a shuffled copy of the batch.

    `targets` are (N, classes) probabilities; the mixed targets weigh each pair by its share of
    the pixels (cutmix) or by the mixing weight (mixup). One Beta draw per batch, as in the papers.
    `generator` (on the images' device) shuffles; `host_generator` (CPU) seeds the scalar draws.
    """
    device = images.device
    seed = host_seed(host_generator)
    rng = np.random.default_rng(seed)  # the scalar draws (Beta has no torch generator argument)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    weight = float(rng.beta(alpha, alpha))
    partner = torch.randperm(images.shape[0], device=device, generator=generator)
    if use_cutmix:
        height, width = images.shape[2:]
        box_h, box_w = round(height * (1 - weight) ** 0.5), round(width * (1 - weight) ** 0.5)
        top, left = (
            int(rng.integers(0, height - box_h + 1)),
            int(rng.integers(0, width - box_w + 1)),
        )
        images = images.clone()
        images[:, :, top : top + box_h, left : left + box_w] = images[
            partner, :, top : top + box_h, left : left + box_w
        ]
        weight = 1 - box_h * box_w / (height * width)  # the pixels actually kept
    else:
        images = weight * images + (1 - weight) * images[partner]
    return images, weight * targets + (1 - weight) * targets[partner]


POLICY_GROUP = 32  # images that share one policy op draw (one draw per image is ~30× slower)


def policy_transform(policy: str):
    """torchvision's v2 transform for `train.augment_policy` (it works on uint8 batches on any
    device): TrivialAugmentWide, AutoAugment with its CIFAR-10 policy, or RandAugment (2 ops at
    magnitude 9, its defaults)."""
    from torchvision.transforms import v2  # torchvision is only needed when a policy is on

    if policy == "trivial":
        return v2.TrivialAugmentWide()
    if policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if policy == "randaugment":
        return v2.RandAugment()
    raise ValueError(f"unknown augment policy {policy!r}")


def host_seed(host_generator: torch.Generator) -> int:
    """A seed for draws made on the CPU, from a CPU generator: a GPU generator's number would
    have to come back to the host, a sync in every step."""
    return int(torch.randint(0, 2**62, (1,), generator=host_generator))


def policy_augment(
    images: torch.Tensor, policy: str, mean: torch.Tensor, std: torch.Tensor,
    host_generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """An augmentation policy on normalised images: back to uint8, one random draw of the
    policy per group of POLICY_GROUP images, normalised again."""
    pixels = (images * std + mean).clamp(0, 255).round().to(torch.uint8)
    augment = policy_transform(policy)
    groups = []
    seed = host_seed(host_generator)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
        torch.default_generator.manual_seed(seed)
        for start in range(0, pixels.shape[0], POLICY_GROUP):
            groups.append(augment(pixels[start : start + POLICY_GROUP]))
    return (torch.cat(groups).float() - mean) / std


@dataclass(frozen=True)
class AugmentState:
    """What the training-set augmentation needs besides the params, fixed for a whole run."""

    first_epoch_flip: torch.Tensor  # (N,) bool: alternating flip's epoch-1 choice per image
    pixel_mean: torch.Tensor  # (1, 3, 1, 1) in 0..255 units: to undo normalisation
    pixel_std: torch.Tensor
    generator: torch.Generator  # on the data's device
    # the CPU's, for seeds of scalar draws (no device→host sync); the same object on the CPU
    host_generator: torch.Generator


def host_generator_for(generator: torch.Generator, seed: int) -> torch.Generator:
    """`generator` itself on the CPU (CPU runs draw exactly as they always did); for a GPU's, a
    CPU generator of its own seed."""
    return generator if generator.device.type == "cpu" else torch.Generator().manual_seed(seed)


def augment_state(
    image_count: int, mean: list[float], std: list[float], seed: int, device: torch.device,
    draw_seed: int | None = None,
) -> AugmentState:  # fmt: skip
    """`draw_seed` (data-parallel ranks but the first): the augmentation draws follow it, so each
    rank draws its own; alternating flip's first-epoch choice stays `seed`'s on every rank,
    since an image moves between ranks from epoch to epoch."""
    generator = torch.Generator(device=device).manual_seed(seed)
    first_epoch_flip = torch.rand(image_count, device=device, generator=generator) < 0.5
    if draw_seed is not None:
        generator.manual_seed(draw_seed)
    host_generator = host_generator_for(generator, seed if draw_seed is None else draw_seed)
    pixel_mean, pixel_std = pixel_statistics(mean, std, device)
    return AugmentState(
        first_epoch_flip=first_epoch_flip,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        generator=generator,
        host_generator=host_generator,
    )


def augment_batch(
    images: torch.Tensor,
    indices: torch.Tensor,
    epoch: int,
    params: TrainParams,
    state: AugmentState,
) -> torch.Tensor:
    """The training augmentation of one batch (`indices` into the training set, `epoch` 1-based):
    the augment policy, crop, flip, cutout, in that order; channels_last for the convolutions.
    uint8 `images` (`train.images_on_device: uint8`) are normalised first."""
    if images.dtype == torch.uint8:
        images = normalised(images, state.pixel_mean, state.pixel_std)
    if params.augment_policy != "none":
        images = policy_augment(
            images, params.augment_policy, state.pixel_mean, state.pixel_std, state.host_generator
        )
    images = random_crop(images, params.crop_padding, params.pad_mode, state.generator)
    if params.flip == "random":
        images = random_flip(images, state.generator)
    elif params.flip == "alternating":
        images = apply_flip(images, alternating_flip_mask(state.first_epoch_flip, indices, epoch))
    if params.cutout:
        images = cutout(images, params.cutout, state.generator)
    return images.contiguous(memory_format=torch.channels_last)


def downscaled(images: torch.Tensor, pixels: int) -> torch.Tensor:
    """A (N, 3, 32, 32) batch at `pixels`×`pixels` (train.low_res_pixels): antialiased bilinear,
    each output pixel a weighted mean of the input pixels it covers; channels_last."""
    small = F.interpolate(
        images, size=(pixels, pixels), mode="bilinear", antialias=True, align_corners=False
    )
    return small.contiguous(memory_format=torch.channels_last)
