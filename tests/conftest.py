"""Shared test helpers: small data in the competition's real formats, written the way the originals are."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.config.load import recipe
from pipeline.config.params import PrepareParams, SyntheticParams, TrainParams
from pipeline.data.formats import (
    CIFAR_FOLDER,
    META_NAME,
    TRAIN_BATCH_NAMES,
    VAL_BATCH_NAME,
    images_to_planes,
    write_custom_test,
)
from pipeline.data.synthetic import write_synthetic_raw
from pipeline.models.registry import ModelConfig
from pipeline.stages import prepare

REPO_ROOT = Path(__file__).resolve().parents[1]


def seed_model(**keys: object) -> ModelConfig:
    """The seed profile's model with `keys` set: the tests' small models start from it."""
    return recipe("seed", {"model": keys}).model


def seed_train(**keys: object) -> TrainParams:
    """The seed profile's recipe with `keys` set (a new schedule drops the old one's keys);
    without distillation, which refuses mixup and cutmix. Its milestones [90, 180] past a short
    test run (which train refuses) mean a constant lr, so that is the schedule then."""
    params = recipe("seed", {"train": keys, "distill": {"rounds": 0}}).train
    if params.schedule == "multistep" and max(params.milestones) >= params.epochs:
        keys = {"schedule": "constant", **keys}
        params = recipe("seed", {"train": keys, "distill": {"rounds": 0}}).train
    return params


SMALL_SYNTHETIC = SyntheticParams(train_images=200, val_images=50, custom_test_images=40, seed=3)


class Python2StylePickler(pickle._Pickler):
    """Protocol 2 written as Python 2 did: byte strings as (SHORT_)BINSTRING opcodes, not _codecs.encode.

    This is how the official CIFAR-10 batches are stored; `pickle.load(..., encoding='bytes')`
    turns those strings back into bytes.
    """

    def save_bytes(self, obj: bytes) -> None:  # noqa: D102
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def python2_style_pickle(content: object) -> bytes:
    buffer = io.BytesIO()
    Python2StylePickler(buffer, protocol=2).dump(content)
    return buffer.getvalue()


def write_python2_style_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    content = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(label) for label in labels],
        b"data": images_to_planes(images),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(python2_style_pickle(content))


def write_official_sized_raw(folder: Path, images_per_batch: int = 10_000) -> Path:
    """CIFAR-10 folder at the official sizes, with cheap flat-colour images (fast to write and compress)."""
    batches_dir = folder / CIFAR_FOLDER
    batches_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in (*TRAIN_BATCH_NAMES, VAL_BATCH_NAME):
        labels = np.arange(images_per_batch) % 10
        images = np.broadcast_to(
            (labels * 25).astype(np.uint8)[:, None, None, None], (images_per_batch, 32, 32, 3)
        )
        write_python2_style_batch(
            batches_dir / name, np.ascontiguousarray(images), rng.permutation(labels)
        )
    meta = {
        b"num_cases_per_batch": images_per_batch,
        b"label_names": [n.encode() for n in CIFAR10_CLASS_NAMES],
        b"num_vis": 3072,
    }
    (batches_dir / META_NAME).write_bytes(python2_style_pickle(meta))
    return batches_dir


def write_small_custom_test(
    path: Path, count: int = 30, layout: str = "2025"
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    ids = np.arange(count)
    write_custom_test(path, images, ids, layout=layout)
    return images, ids


@pytest.fixture
def synthetic_raw(tmp_path: Path) -> Path:
    raw_dir = tmp_path / "raw"
    write_synthetic_raw(raw_dir, SMALL_SYNTHETIC)
    return raw_dir


@pytest.fixture(scope="session")
def official_sized_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding cifar-10-batches-py/ at official sizes (50,000 + 10,000 images)."""
    root = tmp_path_factory.mktemp("official")
    write_official_sized_raw(root)
    return root


FAKE_KAGGLE_USERNAME = "pipeline-tester"
FAKE_KAGGLE_KEY = "fake-kaggle-key-7d1e0c5b9a"  # planted: must never appear in any output


@pytest.fixture
def fake_kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A `FakeKaggle` on 127.0.0.1 that the real kaggle client talks to, with fake credentials.

    The client is pointed at it the way kagglesdk supports: `KaggleEnv.LOCAL` (what
    KAGGLE_API_ENVIRONMENT=LOCALHOST selects) with that environment's endpoint set to the fake.
    HOME and KAGGLE_CONFIG_DIR move to scratch folders, so no real credentials are ever read.
    """
    from fake_kaggle import FakeKaggle
    from kagglesdk import kaggle_env

    from pipeline.integrations import kaggle_client

    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", FAKE_KAGGLE_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KAGGLE_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    api_module = importlib.import_module("kaggle.api.kaggle_api_extended")
    monkeypatch.setattr(api_module.KaggleApi, "args", ["--local"])
    monkeypatch.setattr(kaggle_client, "RETRY_DELAY_SECONDS", 0.01)
    # the runs these tests submit are tiny synthetic ones, which submit refuses, --force or
    # not; test_submission_lifecycle checks that refusal with the real function
    from pipeline.commands import submit

    monkeypatch.setattr(submit, "not_for_the_competition", lambda *args: None)
    with FakeKaggle(FAKE_KAGGLE_USERNAME, FAKE_KAGGLE_KEY) as server:
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, server.url)
        yield server


def prepare_synthetic(root: Path) -> Path:
    """SMALL_SYNTHETIC raw data under root/data/raw, prepared into root/data/prepared (returned)."""
    write_synthetic_raw(root / "data/raw", SMALL_SYNTHETIC)
    prepare.run(
        PrepareParams(), root / "data/raw", root / "data/prepared", root / "metrics/data.json"
    )
    return root / "data/prepared"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers (README: one per usable CPU) share the CPUs: each worker, and the
    stages it starts, gets its share of threads; more would oversubscribe them (OpenMP threads
    spin while they wait). Set before the test modules first import torch, which reads it then.
    dvc's analytics are off for the tests."""
    # every dvc command the tests run would start dvc's analytics daemon, which leaves a
    # report file in /tmp each time and tries the network; a user's own dvc is left as it is
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // workers)))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per usable CPU (xdist's own count is the host's physical cores)."""
    return usable_cpus()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding end-to-end (slow) tests run first: xdist's workers take tests in this order
    and steal from each other when one runs out (pyproject: --dist worksteal), so the long runs
    start early and the many short tests fill whichever worker is free at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within stays


@pytest.fixture(scope="session")
def committed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny two-epoch `dvc repro` of the seed profile, committed, made once per session (per
    xdist worker) for the tests that start from a finished run; each works on a copy
    (`projects.copy_project`). Kaggle credentials are planted in the run's environment, so the
    key scans can check that none reached its outputs."""
    from projects import TWO_EPOCH_PARAMS, commit_all, new_project, sh

    project = new_project(tmp_path_factory.mktemp("committed"), "seed", TWO_EPOCH_PARAMS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAGGLE_USERNAME", FAKE_KAGGLE_USERNAME)
        patch.setenv("KAGGLE_KEY", FAKE_KAGGLE_KEY)
        sh(project, "dvc", "repro")
    commit_all(project, "run")
    return project


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A first `dvc repro` of `projects.TINY_PARAMS` (six epochs) and what it printed, made once
    per session (per xdist worker); not committed after the run. Tests work on a copy."""
    from projects import TINY_PARAMS, new_project, sh

    project = new_project(tmp_path_factory.mktemp("tiny"), "seed", TINY_PARAMS)
    result = sh(project, "dvc", "repro")
    return project, result.stdout + result.stderr
