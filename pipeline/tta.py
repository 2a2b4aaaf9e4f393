"""Test-time augmentation and evaluation: logits averaged over views of each image.

Policies: `none` (the image) and `flip` (the image and its mirror). Used by train (its own
validation), select and predict, so every stage scores a model the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.device import autocast

TTA_POLICIES = ("none", "flip")


def tta_views(images: torch.Tensor, policy: str) -> list[torch.Tensor]:
    """The views of a (N, C, H, W) batch that `policy` averages over."""
    if policy == "none":
        return [images]
    if policy == "flip":
        return [images, images.flip(3)]
    raise ValueError(f"unknown TTA policy {policy!r}; expected one of {TTA_POLICIES}")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    policy: str,
    batch_size: int,
    mixed_precision: bool = True,
) -> torch.Tensor:
    """Mean logits over the policy's views for normalised (N, 3, 32, 32) images → (N, 10) float32."""
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        with autocast(batch.device, mixed_precision):
            views = [model(view).float() for view in tta_views(batch, policy)]
        outputs.append(torch.stack(views).mean(0))
    return torch.cat(outputs)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    policy: str,
    batch_size: int,
    mixed_precision: bool = True,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of `model` on a labelled set under a TTA policy."""
    logits = predict_logits(model, images, policy, batch_size, mixed_precision)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return accuracy, loss
