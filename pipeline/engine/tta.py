"""Test-time augmentation and evaluation: logits averaged over views of each image.

Policies: `none` (the image), `flip` (the image and its mirror), `flip_translate` (those two
with weight 1/4 each, plus the image and its mirror shifted one pixel up-left and one pixel
down-right, reflect-padded, with weight 1/8 each: 6 forward passes, airbench's level-2 TTA) and
`multicrop` (the image and four 2-pixel diagonal shifts, each with its mirror: 10 equal views).
Used by train (its own validation), select and predict, so every stage scores a model the same way.

`tta_fraction` < 1 gives the policy's views only to that share of the images, those the model
is least sure of under the plain view (the highest softmax probability, lowest first); the others
keep the plain view's logits (as hiverge's CIFAR-10 speedrun does for its least-confident
quarter). A sure image's argmax rarely changes under more views, so the accuracy can hold at a
fraction of the forward passes.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import TtaPolicy
from pipeline.engine.device import FLOAT32, Precision

TTA_POLICIES: tuple[str, ...] = typing.get_args(TtaPolicy)  # cheapest first
MULTICROP_SHIFT = 2  # pixels, each way along both diagonals


def translate(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Shift (N, C, H, W) images by `rows` down and `cols` right, reflect-filling the edge."""
    height, width = images.shape[2:]
    pad = max(abs(rows), abs(cols), 1)
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    return padded[:, :, pad - rows : pad - rows + height, pad - cols : pad - cols + width]


def tta_views(images: torch.Tensor, policy: str) -> list[tuple[torch.Tensor, float]]:
    """The (view, weight) pairs of a (N, C, H, W) batch that `policy` averages over; weights sum to 1."""
    if policy == "none":
        return [(images, 1.0)]
    if policy == "flip":
        return [(images, 0.5), (images.flip(3), 0.5)]
    if policy == "flip_translate":
        shifted = [translate(images, -1, -1), translate(images, 1, 1)]
        views = [(images, 0.25), (images.flip(3), 0.25)]
        return views + [(view, 0.125) for image in shifted for view in (image, image.flip(3))]
    if policy == "multicrop":
        shift = MULTICROP_SHIFT
        crops = [images] + [
            translate(images, r, c) for r in (-shift, shift) for c in (-shift, shift)
        ]
        return [(view, 0.1) for crop in crops for view in (crop, crop.flip(3))]
    raise ValueError(f"unknown TTA policy {policy!r}; expected one of {TTA_POLICIES}")


def _views_logits(
    model: nn.Module, images: torch.Tensor, policy: str, batch_size: int, precision: Precision,
    skip_first: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Σ weight × logits over the policy's views (the first, the image itself, left out if
    `skip_first`), in batches → (N, 10) float32."""
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        views = tta_views(batch, policy)[1 if skip_first else 0 :]
        with precision.autocast(batch.device):
            logits = sum(
                (weight * model(view.contiguous(memory_format=torch.channels_last)).float()
                 for view, weight in views),
                torch.zeros(batch.shape[0], NUM_CLASSES, device=batch.device),
            )  # fmt: skip
        outputs.append(logits)
    return torch.cat(outputs) if outputs else torch.zeros(0, NUM_CLASSES, device=images.device)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    policy: str,
    batch_size: int,
    precision: Precision = FLOAT32,
    tta_fraction: float = 1.0,
) -> torch.Tensor:
    """Mean logits over the policy's views for normalised (N, 3, 32, 32) images → (N, 10) float32.

    With `tta_fraction` < 1, only the least-confident `ceil(tta_fraction × N)` images get the
    other views; the rest keep their plain logits (module docstring).
    """
    model.eval()
    if policy == "none" or tta_fraction >= 1:
        return _views_logits(model, images, policy, batch_size, precision)
    plain = _views_logits(model, images, "none", batch_size, precision)
    unsure_count = math.ceil(tta_fraction * images.shape[0])
    unsure = plain.softmax(1).amax(1).argsort()[:unsure_count]  # least confident first
    first_weight = tta_views(images[:1], policy)[0][1]  # the plain view's weight in the policy
    others = _views_logits(model, images[unsure], policy, batch_size, precision, True)
    logits = plain.clone()
    logits[unsure] = first_weight * plain[unsure] + others
    return logits


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    policy: str,
    batch_size: int,
    precision: Precision = FLOAT32,
    tta_fraction: float = 1.0,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of `model` on a labelled set under a TTA policy."""
    logits = predict_logits(model, images, policy, batch_size, precision, tta_fraction)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return accuracy, loss
