"""The competition's file formats: CIFAR-10 python batches and the custom test pickle.

Reading goes through `safe_pickle.restricted_load`, which refuses anything but numeric numpy
arrays filled from the file's own bytes and plain containers. Writing produces the formats exactly as the
competition ships them (protocol 2 with byte-string keys for the batches), so synthetic data and
tests go through the same loaders as real data.

Image arrays everywhere in the project are (N, 32, 32, 3) uint8, channels-last.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classes import NUM_CLASSES
from pipeline.data.safe_pickle import restricted_load
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

IMAGE_SHAPE = (32, 32, 3)  # height, width, channels
PIXELS_PER_IMAGE = 32 * 32 * 3  # 3072: one flat row of a CIFAR batch (R plane, G plane, B plane)
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_BATCH_NAMES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCH_NAME = "test_batch"
META_NAME = "batches.meta"
CIFAR_FILES = (*TRAIN_BATCH_NAMES, VAL_BATCH_NAME, META_NAME)
CUSTOM_TEST_NAMES = ("cifar_test_nolabel.pkl", "cifar_test_nolabels.pkl")  # 2025, 2024
MAX_ID = np.iinfo(np.int64).max  # ids are kept as int64: a uint64 above this would wrap negative


def _get(mapping: Any, key: str, path: Path) -> Any:
    """Look up `key` as the byte string the originals use (or a str, as re-saved copies have)."""
    if not isinstance(mapping, dict):
        raise PipelineError(f"{path}: expected a dict, found {type(mapping).__name__}")
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in mapping)
    raise PipelineError(f"{path}: missing key b'{key}' (found keys: {found})")


def _check_uint8(array: Any, path: Path, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise PipelineError(f"{path}: {what} must be a numpy array, found {type(array).__name__}")
    if array.dtype != np.uint8:
        raise PipelineError(f"{path}: {what} must have dtype uint8, found {array.dtype}")
    return array


def planes_to_images(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of R, G, B planes → (N, 32, 32, 3) channels-last."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def images_to_planes(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) channels-last → (N, 3072) rows of R, G, B planes, as CIFAR batches store."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(-1, PIXELS_PER_IMAGE)


def _check_int_vector(
    values: Any, path: Path, what: str, expected_len: int, highest: int
) -> np.ndarray:
    """`values` as (expected_len,) int64, each in 0–highest. A list's items are checked one by one
    first: numpy would walk nested lists down every path, 2**40 of them through a pickle's memo."""
    if isinstance(values, (list, tuple)):
        for item in values:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise PipelineError(f"{path}: {what} must be integers, found {type(item).__name__}")
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != expected_len:
        raise PipelineError(
            f"{path}: {what} must be a list of {expected_len} integers (one per image), "
            f"found shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise PipelineError(f"{path}: {what} must be integers, found dtype {array.dtype}")
    if array.min() < 0 or array.max() > highest:
        raise PipelineError(
            f"{path}: {what} must be in 0–{highest}, found {array.min()}–{array.max()}"
        )
    return array.astype(np.int64)


def load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One `data_batch_*` / `test_batch` → images (N, 32, 32, 3) uint8, labels (N,) int64 in 0–9."""
    batch = restricted_load(path)
    rows = _check_uint8(_get(batch, "data", path), path, "b'data'")
    if rows.ndim != 2 or rows.shape[1] != PIXELS_PER_IMAGE or rows.shape[0] == 0:
        raise PipelineError(
            f"{path}: b'data' must have shape (N, {PIXELS_PER_IMAGE}) with N > 0, found {rows.shape}"
        )
    labels = _get(batch, "labels", path)
    labels = _check_int_vector(labels, path, "b'labels'", rows.shape[0], NUM_CLASSES - 1)
    return planes_to_images(rows), labels


def load_class_names(path: Path) -> list[str]:
    """`batches.meta` → the 10 class names in label order."""
    meta = restricted_load(path)
    names = _get(meta, "label_names", path)
    if (
        not isinstance(names, list)
        or len(names) != NUM_CLASSES
        or not all(isinstance(name, (bytes, str)) for name in names)
    ):
        raise PipelineError(f"{path}: b'label_names' must be a list of {NUM_CLASSES} names")
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: b'label_names' are not UTF-8 text") from None


def load_custom_test(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The unlabeled custom test pickle → images (N, 32, 32, 3) uint8, ids (N,) int64.

    Accepts both layouts the competition has shipped: 2025 `b'data'` (N, 32, 32, 3) channels-last
    and 2024 flat (N, 3072) rows in CIFAR's plane order.
    """
    content = restricted_load(path)
    data = _check_uint8(_get(content, "data", path), path, "b'data'")
    if data.ndim == 4 and data.shape[1:] == IMAGE_SHAPE:
        images = data
    elif data.ndim == 2 and data.shape[1] == PIXELS_PER_IMAGE:
        images = planes_to_images(data)
    else:
        raise PipelineError(
            f"{path}: b'data' must have shape (N, 32, 32, 3) (2025 layout) or (N, 3072) "
            f"(2024 layout), found {data.shape}"
        )
    if images.shape[0] == 0:
        raise PipelineError(f"{path}: b'data' holds no images")
    ids = _check_int_vector(_get(content, "ids", path), path, "b'ids'", images.shape[0], MAX_ID)
    unique_ids, counts = np.unique(ids, return_counts=True)
    if unique_ids.size != ids.size:
        duplicates = unique_ids[counts > 1][:5].tolist()
        raise PipelineError(f"{path}: b'ids' must be unique, found duplicates such as {duplicates}")
    return np.ascontiguousarray(images), ids


def find_batches_dir(folder: Path) -> Path | None:
    """The first `cifar-10-batches-py/` folder (holding batches.meta) anywhere under `folder`."""
    metas = sorted(Path(folder).rglob(META_NAME))
    return next((meta.parent for meta in metas if meta.parent.name == CIFAR_FOLDER), None)


def find_custom_test(folder: Path) -> Path | None:
    """The custom test pickle under `folder`, by either year's file name."""
    candidates = (p for name in CUSTOM_TEST_NAMES for p in sorted(Path(folder).rglob(name)))
    return next((p for p in candidates if p.is_file()), None)


def not_junk(path: Path, folder: Path) -> bool:
    """Not a macOS archive's `__MACOSX/` copy or an AppleDouble `._name` or other dot entry."""
    return not any(
        part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts
    )


def find_raw_files(folder: Path) -> tuple[Path | None, Path | None]:
    """The one `cifar-10-batches-py/` folder and the one custom test pickle under `folder`: at
    the top (a link to a shared batches folder too), else at any depth (the competition's zip
    unpacked: `cifar-10-python/cifar-10-batches-py/`), leaving out macOS's `__MACOSX/` and
    `._*` copies. Two of either is refused, naming both: which one trains would otherwise
    depend on sort order."""
    folder = Path(folder)
    top = folder / CIFAR_FOLDER
    batches = (
        [top]
        if (top / META_NAME).is_file()
        else sorted(
            meta.parent
            for meta in folder.rglob(META_NAME)
            if meta.parent.name == CIFAR_FOLDER and not_junk(meta, folder)
        )
    )
    tests = [folder / name for name in CUSTOM_TEST_NAMES if (folder / name).is_file()] or [
        p
        for name in CUSTOM_TEST_NAMES
        for p in sorted(folder.rglob(name))
        if p.is_file() and not_junk(p, folder)
    ]
    for found, what in ((batches, f"{CIFAR_FOLDER}/ folders"), (tests, "custom test pickles")):
        if len(found) > 1:
            raise PipelineError(
                f"{folder}: holds {len(found)} {what} ({found[0]} and {found[1]}); keep one "
                "(move the other out of the folder)"
            )
    return (batches[0] if batches else None), (tests[0] if tests else None)


def _pickle_atomic(path: Path, content: dict, protocol: int) -> None:
    with atomic_path(path) as temp_path, temp_path.open("wb") as handle:
        pickle.dump(content, handle, protocol=protocol)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> None:
    """Write a batch the way the original archive does: protocol 2, byte-string keys, plane rows."""
    content = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images_to_planes(images),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(labels))],
    }
    _pickle_atomic(path, content, protocol=2)


def write_class_names(path: Path, class_names: list[str], images_per_batch: int) -> None:
    content = {
        b"num_cases_per_batch": images_per_batch,
        b"label_names": [name.encode() for name in class_names],
        b"num_vis": PIXELS_PER_IMAGE,
    }
    _pickle_atomic(path, content, protocol=2)


def write_custom_test(
    path: Path, images: np.ndarray, ids: np.ndarray, layout: str = "2025"
) -> None:
    """Write the custom test pickle: 2025 channels-last images or 2024 flat plane rows."""
    data = images if layout == "2025" else images_to_planes(images)
    content = {b"data": np.ascontiguousarray(data, dtype=np.uint8), b"ids": np.asarray(ids)}
    _pickle_atomic(path, content, protocol=pickle.DEFAULT_PROTOCOL)
