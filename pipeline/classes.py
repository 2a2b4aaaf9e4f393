"""CIFAR-10's ten classes: their number and order, which the submission's integer labels follow."""

from __future__ import annotations

NUM_CLASSES = 10
# Label order of CIFAR-10 and of the submission's integer labels.
CIFAR10_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
