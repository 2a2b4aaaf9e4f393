"""The bad-input corpus: each malformed input gives one line naming the file (or key) and the
problem, exit status 1, no traceback, and no partial output: the command's outputs are absent
and no temporary file is left anywhere in the project.

Every case runs `python -m pipeline ...` (its `main`) in a scratch project whose inputs one
case at a time damages.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHETIC, python2_style_pickle, seed_model

from pipeline.__main__ import main
from pipeline.data.formats import CIFAR_FOLDER, CUSTOM_TEST_NAMES
from pipeline.data.synthetic import write_synthetic_raw
from pipeline.records.checkpoint import load_checkpoint, save_checkpoint

RAW = Path("data/raw")
BATCH = RAW / CIFAR_FOLDER / "data_batch_1"
CUSTOM = RAW / CUSTOM_TEST_NAMES[0]
PREPARED = Path("data/prepared")
CSV = Path("submissions/latest.csv")
MARKER = "pwned-by-pickle"  # what the code-execution payload would create


@dataclass(frozen=True)
class Case:
    damage: Callable[[Path], None]  # changes the project (cwd) into the bad state
    argv: list[str]
    expected: str  # in the one error line
    absent: tuple[str, ...]  # outputs that must not exist afterwards


def _params(text: str) -> Callable[[Path], None]:
    return lambda project: (project / "params.yaml").write_text(text)


def _write(path: Path, content: bytes) -> Callable[[Path], None]:
    return lambda project: (project / path).write_bytes(content)


def _batch(**changes: object) -> bytes:
    content = {b"batch_label": b"training batch 1 of 5", b"labels": [i % 10 for i in range(40)],
               b"data": np.zeros((40, 3072), np.uint8), b"filenames": [b"x"] * 40}  # fmt: skip
    content.update({key.encode(): value for key, value in changes.items()})
    content = {key: value for key, value in content.items() if value is not None}
    return python2_style_pickle(content)


def _custom(data: np.ndarray, ids: np.ndarray) -> bytes:
    return pickle.dumps({b"data": data, b"ids": ids}, protocol=4)


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


def _zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> Callable[[Path], None]:
    def damage(project: Path) -> None:
        with zipfile.ZipFile(project / path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        (project / "params.yaml").write_text(f"data:\n  source: local\n  path: {path}\n")

    return damage


def _not_a_zip(project: Path) -> None:
    (project / "bundle.zip").write_text("not a zip at all")
    (project / "params.yaml").write_text("data:\n  source: local\n  path: bundle.zip\n")


def _tar_symlink(project: Path) -> None:
    with tarfile.open(project / "bundle.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(f"{CIFAR_FOLDER}/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    (project / "params.yaml").write_text(
        "data:\n  source: local\n  path: bundle.tar.gz\n  custom_test_path: x.pkl\n"
    )


def _checkpoint(project: Path, state_from: str) -> None:
    from pipeline.engine.models import build_model, model_config

    seed = seed_model(base_width=8, blocks=[1, 1, 1])
    other = seed_model(name="airnet", widths=[8, 16, 16], residual=False)
    weights = build_model(other if state_from == "airnet" else seed).state_dict()
    save_checkpoint(project / "models/final.pt", {
        "model_state": weights, "model_config": model_config(seed), "epoch": 1,
        "val_accuracy": 0.5, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    })  # fmt: skip


def _csv(text: str) -> Callable[[Path], None]:
    def damage(project: Path) -> None:
        (project / CSV).parent.mkdir(exist_ok=True)
        (project / CSV).write_text(text)

    return damage


IDS = np.arange(SMALL_SYNTHETIC.custom_test_images)
GOOD_ROWS = "".join(f"{i},{i % 10}\n" for i in IDS)
PREPARE = (["prepare"], ("data/prepared",))
FETCH = (["fetch"], ("data/raw",))
CASES = {
    "truncated pickle": Case(lambda p: (p / BATCH).write_bytes((p / BATCH).read_bytes()[:5000]),
                             *PREPARE[:1], "data_batch_1: not a valid pickle (UnpicklingError: pickle data was truncated)", PREPARE[1]),
    "empty file": Case(_write(BATCH, b""), *PREPARE[:1], "data_batch_1: file is empty", PREPARE[1]),
    "wrong keys": Case(_write(BATCH, _batch(data=None)), *PREPARE[:1],
                       "data_batch_1: missing key b'data'", PREPARE[1]),
    "wrong dtype": Case(_write(BATCH, _batch(data=np.zeros((40, 3072), np.int32))), *PREPARE[:1],
                        "must have dtype uint8, found int32", PREPARE[1]),
    "wrong shape": Case(_write(BATCH, _batch(data=np.zeros((40, 3000), np.uint8))), *PREPARE[:1],
                        "data_batch_1: b'data' must", PREPARE[1]),
    "float data with NaN": Case(
        _write(CUSTOM, _custom(np.full((40, 32, 32, 3), np.nan, np.float32), IDS)), *PREPARE[:1],
        f"{CUSTOM_TEST_NAMES[0]}: b'data' must have dtype uint8, found float32", PREPARE[1]),
    "label out of range": Case(_write(BATCH, _batch(labels=[10] * 40)), *PREPARE[:1],
                               "data_batch_1: b'labels'", PREPARE[1]),
    "duplicate ids": Case(_write(CUSTOM, _custom(np.zeros((40, 32, 32, 3), np.uint8), IDS * 0)),
                          *PREPARE[:1], "b'ids' must be unique", PREPARE[1]),
    "ids and images differ in count": Case(
        _write(CUSTOM, _custom(np.zeros((40, 32, 32, 3), np.uint8), IDS[:30])), *PREPARE[:1],
        f"{CUSTOM_TEST_NAMES[0]}: b'ids'", PREPARE[1]),
    "code-execution pickle": Case(_write(CUSTOM, pickle.dumps({b"data": _RunsCode()}, protocol=2)),
                                  *PREPARE[:1], "refused", PREPARE[1] + (MARKER,)),
    "zip missing a member": Case(_zip(Path("bundle.zip"), {f"{CIFAR_FOLDER}/batches.meta": b"x"}),
                                 *FETCH[:1], "bundle.zip", FETCH[1]),
    "zip member with ../": Case(_zip(Path("bundle.zip"), {"../escape.pkl": b"x"}), *FETCH[:1],
                                "refused unsafe archive member", FETCH[1] + ("../escape.pkl",)),
    "zip member with an absolute path": Case(_zip(Path("bundle.zip"), {"/tmp/abs-escape.pkl": b"x"}),
                                             *FETCH[:1], "refused unsafe archive member", FETCH[1]),
    "tar symlink out of the folder": Case(_tar_symlink, *FETCH[:1], "refused unsafe archive member",
                                          FETCH[1]),
    "not an archive, archive's name": Case(_not_a_zip, *FETCH[:1], "bundle.zip", FETCH[1]),
    "corrupt checkpoint": Case(lambda p: (p / "models").mkdir() or (p / "models/final.pt").write_bytes(
        b"PK\x03\x04 not really"), ["predict"], "models/final.pt: corrupt or unsafe checkpoint",
        ("submissions/latest.csv",)),
    "checkpoint of another architecture": Case(lambda p: _checkpoint(p, "airnet"), ["predict"],
                                               "models/final.pt: weights do not fit model",
                                               ("submissions/latest.csv",)),
    "params: unknown key": Case(_params("train:\n  epoch: 3\n"), ["train"],
                                "unknown key 'train.epoch'", ("models/checkpoints",)),
    "params: wrong type": Case(_params("train:\n  lr: fast\n"), ["train"], "train.lr",
                               ("models/checkpoints",)),
    "params: negative epochs": Case(_params("train:\n  epochs: -3\n"), ["train"], "train.epochs",
                                    ("models/checkpoints",)),
    "over-budget model": Case(_params("model:\n  name: seed_resnet\n  base_width: 72\n  blocks: [4, 4, 3]\n  dropout: 0.17\ntrain:\n  device: cpu\n"), ["train"],
                              "over the budget model.max_params", ("models/checkpoints",)),
    "CSV with a wrong header": Case(_csv("id,label\n" + GOOD_ROWS), ["submit"],
                                    "latest.csv: header must be ID,Labels",
                                    ("submissions/history.csv",)),
    "CSV with a wrong row count": Case(_csv("ID,Labels\n" + GOOD_ROWS[:-5]), ["submit"],
                                       f"latest.csv: expected {IDS.size} rows", ("submissions/history.csv",)),
    "CSV missing ids": Case(_csv("ID,Labels\n" + GOOD_ROWS.replace("0,0\n", "99,0\n", 1)), ["submit"],
                            "ids differ from the custom test's: missing [0]", ("submissions/history.csv",)),
}  # fmt: skip


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic raw data and its prepared arrays: every case's starting point."""
    project = tmp_path_factory.mktemp("bad-inputs")
    write_synthetic_raw(project / RAW, SMALL_SYNTHETIC)
    (project / "params.yaml").write_text("prepare:\n  val: test_batch\n")
    cwd = Path.cwd()
    os.chdir(project)
    try:
        assert main(["prepare"]) == 0
    finally:
        os.chdir(cwd)
    return project


def _leftovers(project: Path) -> list[Path]:
    return [p for p in project.rglob(".*") if p.name.endswith((".tmp", ".old")) or
            p.name.startswith(".fetch-")]  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_1_and_no_partial_output(
    name: str, prepared_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    case = CASES[name]
    project = tmp_path / "project"
    shutil.copytree(prepared_project, project)
    for output in case.absent:  # the outputs this command would write: not there before
        target = project / output
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.chdir(project)
    case.damage(project)
    capsys.readouterr()

    assert main(case.argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expected in lines[0], lines[0]
    assert "Traceback" not in err
    for output in case.absent:
        assert not (project / output).exists(), output
    assert not _leftovers(project)


def test_the_corpus_has_at_least_twenty_distinct_cases() -> None:
    assert len(CASES) >= 20


def test_an_unexpected_error_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  source: synthetic\n")

    def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    from pipeline.stages import fetch

    monkeypatch.setattr(fetch, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["fetch"])


def test_debug_shows_an_expected_errors_traceback(tmp_path: Path, monkeypatch) -> None:
    from pipeline.errors import PipelineError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(PipelineError, match="unknown key"):
        main(["train", "--debug"])


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_earlier_one(
    prepared_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    project = tmp_path / "project"
    shutil.copytree(prepared_project, project)
    (project / "params.yaml").write_text(
        "model:\n  name: seed_resnet\n  base_width: 8\n  blocks: [1, 1, 1]\n  dropout: 0.17\n"
        "train:\n  device: cpu\n  epochs: 2\n  batch_size: 50\n  checkpoint_every: 1\n"
        "  ema_decay: 0.0\n  augment_policy: none\n"
    )
    monkeypatch.chdir(project)
    real_save = torch.save

    def save_until_the_disk_is_full(
        obj: object, handle: object, *args: object, **kw: object
    ) -> None:
        if "epoch_0002" in str(getattr(handle, "name", "")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle, *args, **kw)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    assert main(["train"]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert "epoch_0002.pt: could not write the checkpoint (No space left on device)" in line
    assert load_checkpoint(project / "models/checkpoints/epoch_0001.pt")["epoch"] == 1
    assert not (project / "models/checkpoints/epoch_0002.pt").exists()
    assert not _leftovers(project)
