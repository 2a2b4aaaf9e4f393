"""Stage 2, prepare → data/prepared/: validated, compact arrays for train / val / custom test.

Reads data/raw through the restricted loaders (data/formats.py), picks the validation set
(`prepare.val`: the official test_batch, or a stratified hold-out of training images; with the
hold-out, `prepare.train_on_test_batch` adds test_batch to the training images), and
writes uncompressed .npz files plus `dataset.json` (class names, the training set's per-channel
mean/std) and a data report of counts per class (a DVC metric).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.classes import CIFAR10_CLASS_NAMES, NUM_CLASSES
from pipeline.config.params import PrepareParams
from pipeline.data.formats import (
    CIFAR_FOLDER,
    META_NAME,
    TRAIN_BATCH_NAMES,
    VAL_BATCH_NAME,
    find_raw_files,
    load_cifar_batch,
    load_class_names,
    load_custom_test,
)
from pipeline.errors import PipelineError
from pipeline.files import disk_errors_reported, write_json_atomic
from pipeline.folders import atomic_directory
from pipeline.paths import DATA_REPORT_PATH, PREPARED_DIR, RAW_DIR
from pipeline.reporting import console


def stratified_holdout(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` images, an equal share per class (remainder to the first classes)."""
    rng = np.random.default_rng(seed)
    per_class = [
        count // NUM_CLASSES + (1 if c < count % NUM_CLASSES else 0) for c in range(NUM_CLASSES)
    ]
    chosen = []
    for class_index, wanted in enumerate(per_class):
        members = np.flatnonzero(labels == class_index)
        if members.size <= wanted:
            raise PipelineError(
                f"params: prepare.holdout_images={count} asks for {wanted} images of class "
                f"{class_index}, but the training set has only {members.size}: make it smaller "
                "(each class keeps images to train on)"
            )
        chosen.append(rng.choice(members, size=wanted, replace=False))
    return np.sort(np.concatenate(chosen))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, 32, 32, 3) uint8 images, on the 0–1 scale."""
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(axis=0).tolist(), pixels.std(axis=0).tolist()


def class_counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=NUM_CLASSES).tolist()


def run(params: PrepareParams, raw_dir: Path = RAW_DIR, prepared_dir: Path = PREPARED_DIR,
        report_path: Path = DATA_REPORT_PATH) -> None:  # fmt: skip
    batches_dir, custom_test_path = find_raw_files(raw_dir)
    if batches_dir is None or custom_test_path is None:
        missing = f"{CIFAR_FOLDER}/" if batches_dir is None else "custom test pickle"
        raise PipelineError(f"{raw_dir}: no {missing} found; run the fetch stage first")
    class_names = load_class_names(batches_dir / META_NAME)
    if class_names != CIFAR10_CLASS_NAMES:
        raise PipelineError(
            f"{batches_dir / META_NAME}: class names must be CIFAR-10's in order "
            f"{CIFAR10_CLASS_NAMES} (submission labels follow it), found {class_names}"
        )
    loaded = [load_cifar_batch(batches_dir / name) for name in TRAIN_BATCH_NAMES]
    train_images = np.concatenate([images for images, _ in loaded])
    train_labels = np.concatenate([labels for _, labels in loaded])
    if params.val == "test_batch":
        val_images, val_labels = load_cifar_batch(batches_dir / VAL_BATCH_NAME)
    else:
        holdout = stratified_holdout(train_labels, params.holdout_images, params.seed)
        keep = np.ones(train_labels.size, dtype=bool)
        keep[holdout] = False
        val_images, val_labels = train_images[holdout], train_labels[holdout]
        train_images, train_labels = train_images[keep], train_labels[keep]
        if params.train_on_test_batch:  # every labelled image but the holdout trains
            test_images, test_labels = load_cifar_batch(batches_dir / VAL_BATCH_NAME)
            train_images = np.concatenate([train_images, test_images])
            train_labels = np.concatenate([train_labels, test_labels])

    custom_test_images, custom_test_ids = load_custom_test(custom_test_path)

    mean, std = channel_stats(train_images)
    report = {
        "train_images": int(train_labels.size),
        "val_images": int(val_labels.size),
        "custom_test_images": int(custom_test_ids.size),
    }  # the headline (`dvc metrics show`); the counts per class are in dataset.json
    per_class = {
        "train_per_class": dict(zip(class_names, class_counts(train_labels), strict=True)),
        "val_per_class": dict(zip(class_names, class_counts(val_labels), strict=True)),
    }
    # A full or read-only disk: one line, and the previous data/prepared stays (the report is
    # written inside the swap, so a failed report discards the new arrays too).
    with disk_errors_reported(prepared_dir), atomic_directory(prepared_dir) as out:
        np.savez(out / "train.npz", images=train_images, labels=train_labels)
        np.savez(out / "val.npz", images=val_images, labels=val_labels)
        np.savez(out / "custom_test.npz", images=custom_test_images, ids=custom_test_ids)
        write_json_atomic(
            out / "dataset.json",
            {"class_names": class_names, "mean": mean, "std": std, "val_source": params.val,
             "train_sources": list(TRAIN_BATCH_NAMES)
             + ([VAL_BATCH_NAME] if params.train_on_test_batch else []),
             "custom_test_file": custom_test_path.name} | per_class,
        )  # fmt: skip
        with disk_errors_reported(report_path):
            write_json_atomic(report_path, report)
    console.print(
        f"prepare: {report['train_images']} train / {report['val_images']} val "
        f"({params.val}) / {report['custom_test_images']} custom test images → {prepared_dir}"
    )
