"""Deterministic, learnable stand-in data for demos and tests, written in the official formats.

Each class is a shape with a class colour (jittered), at a random position and size, on a noisy
random background: a small network learns it within a few epochs, so an end-to-end run on CPU
shows real learning. The files go through exactly the loaders that real data does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.classes import CIFAR10_CLASS_NAMES, NUM_CLASSES
from pipeline.config.params import SyntheticParams
from pipeline.data.formats import (
    CIFAR_FOLDER,
    CUSTOM_TEST_NAMES,
    META_NAME,
    TRAIN_BATCH_NAMES,
    VAL_BATCH_NAME,
    write_cifar_batch,
    write_class_names,
    write_custom_test,
)

# Class k is drawn as the k-th shape of `_shape_masks` (disk, square, diamond, ring, bar, pillar,
# cross, triangle, saltire, checker); batches.meta still names CIFAR-10's classes, as real data does.
# One RGB colour per class, 0–255; the per-image jitter below keeps colour alone from sufficing.
_CLASS_COLOURS = np.array(
    [
        [230, 60, 60], [60, 200, 60], [70, 90, 230], [230, 210, 50], [200, 70, 200],
        [60, 210, 210], [240, 140, 40], [150, 150, 150], [120, 60, 20], [250, 250, 250],
    ],
    dtype=np.float32,
)  # fmt: skip


def _shape_masks(dy: np.ndarray, dx: np.ndarray, radius: np.ndarray) -> list[np.ndarray]:
    """Masks (N, 32, 32) of each class's shape; dy, dx are offsets from the centre in pixels."""
    ady, adx = np.abs(dy), np.abs(dx)
    distance = np.sqrt(dy**2 + dx**2)
    square = np.maximum(ady, adx) < radius
    bar = (ady < radius / 3) & (adx < radius)
    pillar = (adx < radius / 3) & (ady < radius)
    return [
        distance < radius,
        square,
        ady + adx < radius,
        (distance < radius) & (distance > radius / 2),
        bar,
        pillar,
        bar | pillar,
        (dy > -radius) & (dy < radius) & (adx < (dy + radius) / 2),
        (np.abs(adx - ady) < radius / 4) & square,
        square & ((np.floor(dx / 3) + np.floor(dy / 3)) % 2 == 0),
    ]


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render one image per label → (N, 32, 32, 3) uint8."""
    count = labels.shape[0]
    coords = np.arange(32, dtype=np.float32)
    centre_y = rng.uniform(11, 21, size=(count, 1, 1)).astype(np.float32)
    centre_x = rng.uniform(11, 21, size=(count, 1, 1)).astype(np.float32)
    radius = rng.uniform(7, 11, size=(count, 1, 1)).astype(np.float32)
    dy = coords[None, :, None] - centre_y
    dx = coords[None, None, :] - centre_x
    masks = np.stack(_shape_masks(dy, dx, radius), axis=1)  # (N, classes, 32, 32)
    mask = masks[np.arange(count), labels][..., None]  # (N, 32, 32, 1)
    background = rng.uniform(0, 120, size=(count, 1, 1, 3)).astype(np.float32)
    colour = _CLASS_COLOURS[labels][:, None, None, :] + rng.normal(0, 25, size=(count, 1, 1, 3))
    images = np.where(mask, colour, background) + rng.normal(0, 18, size=(count, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def _balanced_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(count) % NUM_CLASSES)


def write_synthetic_raw(raw_dir: Path, params: SyntheticParams) -> None:
    """Write 5 training batches, test_batch, batches.meta and cifar_test_nolabel.pkl (2025)."""
    rng = np.random.default_rng(params.seed)
    batches_dir = Path(raw_dir) / CIFAR_FOLDER
    batches_dir.mkdir(parents=True, exist_ok=True)

    train_labels = _balanced_labels(params.train_images, rng)
    train_images = make_images(train_labels, rng)
    chunks = np.array_split(np.arange(params.train_images), len(TRAIN_BATCH_NAMES))
    for number, (name, indices) in enumerate(zip(TRAIN_BATCH_NAMES, chunks, strict=True), start=1):
        label = f"training batch {number} of {len(TRAIN_BATCH_NAMES)}"
        write_cifar_batch(batches_dir / name, train_images[indices], train_labels[indices], label)

    val_labels = _balanced_labels(params.val_images, rng)
    write_cifar_batch(
        batches_dir / VAL_BATCH_NAME,
        make_images(val_labels, rng),
        val_labels,
        "testing batch 1 of 1",
    )
    write_class_names(batches_dir / META_NAME, CIFAR10_CLASS_NAMES, len(chunks[0]))

    custom_labels = _balanced_labels(params.custom_test_images, rng)
    custom_ids = np.arange(params.custom_test_images)
    write_custom_test(raw_dir / CUSTOM_TEST_NAMES[0], make_images(custom_labels, rng), custom_ids)
