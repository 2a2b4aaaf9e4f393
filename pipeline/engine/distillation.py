"""A student's soft labels in its training set, and the loss it learns them with (the distill
stage's students: stages/distill_round.py builds the targets, engine/loop.py uses them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.classes import NUM_CLASSES


@dataclass(frozen=True)
class DistillTargets:
    """The custom-test images' soft labels in a student's training set (stages/distill_round.py).

    Rows `first_index` onward of the training set are the custom-test images; `probabilities`
    are the teacher's, at `temperature`. Their loss is the cross-entropy of the student's
    softmax at that temperature against them, × temperature² (Hinton et al.: the gradients
    then keep their size as the temperature changes) × `weight`; the labelled rows keep the
    label-smoothed cross-entropy. Every row's loss has the same shape, so batches mixing both
    kinds keep one shape (no recompiles).
    """

    first_index: int
    probabilities: torch.Tensor  # (M, classes) on the training device
    temperature: float
    weight: float


def distillation_batch(
    distill: DistillTargets, indices: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets (N, classes), temperature (N,), weight (N,)) of a batch's rows."""
    pseudo = indices >= distill.first_index
    smoothed = F.one_hot(labels, NUM_CLASSES).float() * (1 - smoothing) + smoothing / NUM_CLASSES
    teacher = distill.probabilities[(indices - distill.first_index).clamp_min(0)]
    targets = torch.where(pseudo[:, None], teacher, smoothed)
    ones = torch.ones_like(indices, dtype=torch.float32)
    temperature = torch.where(pseudo, distill.temperature, ones)
    weight = torch.where(pseudo, distill.weight * distill.temperature**2, ones)
    return targets, temperature, weight


def distillation_loss(
    logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of weight × cross-entropy(softmax(logits / temperature), targets)."""
    log_probabilities = F.log_softmax(logits.float() / temperature[:, None], dim=1)
    return (weight * -(targets * log_probabilities).sum(1)).mean()
