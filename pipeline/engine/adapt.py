"""Test-time adaptation: labelling a whole unlabelled set at once, not image by image.

The competition's test images come from another source than CIFAR-10, so a model trained on
CIFAR-10 meets other image statistics there. Two cheap remedies that look at the test images
themselves (transductive: `adapt.use_test_images: false` turns them off):

- AdaBN (Li et al. 2016): BatchNorm's running mean and variance re-estimated on the test
  images, so each layer normalises with the statistics of the data it now sees. Only those
  buffers change, in a copy of the model; its weights are untouched.
- Balanced assignment: the labels are assigned so that their counts follow a class prior
  (uniform unless given), trading each image's less likely class where the model would
  otherwise over-predict a class. Sinkhorn scaling first makes the probabilities' column sums
  match the prior; then images are assigned greedily, most confident (image, class) pair first,
  until each class holds its count, so the counts are exactly the prior's.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from pipeline.engine.device import FLOAT32, Precision
from pipeline.engine.tta import predict_logits
from pipeline.errors import PipelineError

SINKHORN_ITERATIONS = 100  # column/row rescalings; the column sums agree to <1e-6 well before


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, batch_size: int, precision: Precision = FLOAT32
) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are those of `images` (normalised,
    on the model's device). Each layer's mean and variance are averaged over the batches with
    equal weight (momentum None), so the batches are of equal size (±1) and drawn in a fixed
    shuffled order: a file sorted by class still gives every batch the whole set's statistics.
    Everything but BatchNorm stays in eval mode (no dropout)."""
    adapted = copy.deepcopy(model)
    adapted.eval()
    layers = batchnorm_layers(adapted)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches
        layer.train()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    batches = math.ceil(images.shape[0] / batch_size)
    for indices in torch.tensor_split(order.to(images.device), batches):
        batch = images[indices].contiguous(memory_format=torch.channels_last)
        with precision.autocast(batch.device):
            adapted(batch)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return adapted.eval()


def prior_counts(
    prior: list[float], total: int, probabilities: torch.Tensor | None = None
) -> np.ndarray:
    """Integer counts ∝ `prior` (empty: uniform) that sum to `total`: each class's share rounded
    down, and the spare ones (`total` not a multiple of the shares) where the probability mass
    is: to the classes whose expected count under `probabilities` (N, C), their column sums,
    most exceeds that floor. Without `probabilities`, to the largest remainders. Spares by
    class index gave one custom-test image to "airplane" whatever the model said, and left
    the model's top class one short."""
    shares = np.asarray(prior if prior else [1.0] * 10, dtype=np.float64)
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    spare = total - int(counts.sum())
    if probabilities is None:
        wanted = exact - counts
    else:
        wanted = probabilities.double().sum(0).cpu().numpy() - counts
    counts[np.argsort(-wanted, kind="stable")[:spare]] += 1
    return counts


def sinkhorn(probabilities: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
    """`probabilities` (N, C) rescaled per class and per image so that each row sums to 1 and
    column c sums to counts[c] (the prior's share of N): soft labels balanced to the prior."""
    target = torch.as_tensor(counts, dtype=torch.float64, device=probabilities.device)
    scaled = probabilities.double().clamp_min(1e-12)
    for _ in range(SINKHORN_ITERATIONS):
        scaled = scaled * (target / scaled.sum(0))
        scaled = scaled / scaled.sum(1, keepdim=True)
    return scaled.float()


def balanced_assignment(probabilities: torch.Tensor, prior: list[float]) -> np.ndarray:
    """One label per row of `probabilities` (N, C), with exactly `prior_counts(prior, N, probabilities)` of each
    class: the Sinkhorn-balanced (image, class) pairs taken most probable first, each image
    once, each class until full. Ties go to the lower image index, then the lower class."""
    count, classes = probabilities.shape
    prior_classes = len(prior) if prior else 10
    if prior_classes != classes:
        raise ValueError(f"a prior of {prior_classes} classes for {classes}-class predictions")
    capacity = prior_counts(prior, count, probabilities)
    scores = sinkhorn(probabilities, capacity).cpu().numpy().ravel()
    order = np.lexsort((np.arange(scores.size), -scores))  # by score, then position
    labels = np.full(count, -1, dtype=np.int64)
    for pair in order:
        image, label = divmod(int(pair), classes)
        if labels[image] < 0 and capacity[label] > 0:
            labels[image] = label
            capacity[label] -= 1
    return labels


def adapted_logits(
    model: nn.Module, images: torch.Tensor, tta: str, batchnorm: bool, batch_size: int,
    precision: Precision = FLOAT32, tta_fraction: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """The TTA-averaged logits of a whole unlabelled set, after AdaBN on it when `batchnorm`."""
    if batchnorm:
        model = recalibrate_batchnorm(model, images, batch_size, precision)
    return predict_logits(model, images, tta, batch_size, precision, tta_fraction)


def require_finite(logits: torch.Tensor, stage: str, whose: str) -> None:
    """Diverged weights give NaN or inf logits, where argmax says class 0 for every image and
    balancing assigns labels all the same: refused, before anything is written."""
    if not torch.isfinite(logits).all():
        raise PipelineError(
            f"{stage}: {whose} outputs on the custom test set are not finite (NaN or inf): its "
            "weights diverged in training; nothing was written (retrain with a lower train.lr)"
        )


def assign_labels(logits: torch.Tensor, balance: str, prior: list[float]) -> np.ndarray:
    """Labels for a whole set: the argmax, or balanced to `prior` (`balance: prior`)."""
    if balance == "prior":
        return balanced_assignment(logits.float().softmax(1), prior)
    return logits.argmax(1).cpu().numpy()
