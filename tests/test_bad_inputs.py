"""The bad-input corpus: each malformed input gives one line naming the file (or key) and the
problem, exit status 1, no traceback, and no partial output: the command's outputs are absent
and no temporary file is left anywhere in the project.

Every case runs `python -m pipeline ...` (its `main`) in a scratch project whose inputs one
case at a time damages.
"""

from __future__ import annotations

import errno
import json
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
from conftest import REPO_ROOT, SMALL_SYNTHETIC, python2_style_pickle, seed_model

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
SECRET = "hunter2-kaggle-key-0123"  # a key in a file linked in by mistake: never printed


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


class _Array:
    """A uint8 array pickled the way numpy does, `_reconstruct(ndarray, (0,), 'B')` then BUILD with
    `shape` and `data`; without data, `_reconstruct` alone declaring `shape` (no bytes behind it)."""

    def __init__(self, shape: tuple, data: bytes | None = None) -> None:
        self.shape, self.data = shape, data

    def __reduce__(self) -> tuple:
        reconstruct = np._core.multiarray._reconstruct
        if self.data is None:
            return (reconstruct, (np.ndarray, self.shape, b"B"))
        state = (1, self.shape, np.dtype(np.uint8), False, self.data)
        return (reconstruct, (np.ndarray, (0,), b"B"), state)


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


def _checkpoint(project: Path, state_from: str, **changes: object) -> None:
    from pipeline.engine.models import build_model, model_config

    seed = seed_model(base_width=8, blocks=[1, 1, 1])
    other = seed_model(name="airnet", widths=[8, 16, 16], residual=False, whiten_bias_epochs=0)
    weights = build_model(other if state_from == "airnet" else seed).state_dict()
    save_checkpoint(project / "models/final.pt", {
        "model_state": weights, "model_config": model_config(seed), "epoch": 1,
        "val_accuracy": 0.5, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    } | changes)  # fmt: skip


SCRIPT = "</script><script>alert(document.cookie)</script>"  # stored XSS in dvc plots' page
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]


def _huge_checkpoint(project: Path) -> None:
    """final.pt whose model_config says ~860 million parameters (3.5 GB if it were built)."""
    config = {"name": "airnet", "max_params": 5_000_000, "widths": [2000, 4000, 4000],
              "residual": True}  # fmt: skip
    save_checkpoint(project / "models/final.pt", {
        "model_state": {}, "model_config": config, "epoch": 1, "val_accuracy": 0.5,
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    })  # fmt: skip


def _history(field: str, value: str) -> Callable[[Path], None]:
    """submissions/history.csv with one submitted row whose `field` is `value`."""
    from pipeline.records.history import FIELDS

    row = {"submitted_utc": "2026-11-26T00:00:00+00:00", "run_id": "abc123def456",
           "commit": "a" * 40, "csv_md5": "0" * 32, "competition": "c", "message": "run x",
           "kaggle_ref": "1", "forced": ""} | {field: value}  # fmt: skip

    def damage(project: Path) -> None:
        (project / "submissions").mkdir(exist_ok=True)
        (project / "submissions/history.csv").write_text(
            ",".join(FIELDS) + "\n" + ",".join(row[f] for f in FIELDS) + "\n"
        )

    return damage


def _csv(text: str | bytes) -> Callable[[Path], None]:
    def damage(project: Path) -> None:
        (project / CSV).parent.mkdir(exist_ok=True)
        content = text.encode() if isinstance(text, str) else text
        (project / CSV).write_bytes(content)

    return damage


def _csv_links_to_a_key_file(project: Path) -> None:
    """latest.csv -> a kaggle.json outside the project, as a mistaken `ln -s` would make it."""
    key_file = project.parent / "home" / ".kaggle" / "kaggle.json"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(f'{{"username": "student", "key": "{SECRET}"}}\n')
    (project / CSV).parent.mkdir(exist_ok=True)
    (project / CSV).unlink(missing_ok=True)
    (project / CSV).symlink_to(key_file)


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
    # issue 29, what submit reads (none may print the file's content):
    "latest.csv links to kaggle.json": Case(_csv_links_to_a_key_file, ["submit"],
                                            "latest.csv: a symbolic link to a file that is not an object of this project's DVC cache",
                                            ("submissions/history.csv",)),
    "latest.csv whose first line is a key": Case(_csv(f"{SECRET}\n" + GOOD_ROWS), ["submit"],
                                                 "latest.csv: header must be ID,Labels; its first line is something else (not shown)",
                                                 ("submissions/history.csv",)),
    "latest.csv with a key as a label": Case(_csv("ID,Labels\n" + GOOD_ROWS.replace("0,0\n", f"0,{SECRET}\n", 1)),
                                             ["submit"], "latest.csv: line 2 must be two integers", ("submissions/history.csv",)),
    "latest.csv is a folder": Case(lambda p: (p / CSV).mkdir(parents=True), ["submit"], "latest.csv: a folder",
                                   ("submissions/history.csv",)),
    "latest.csv with a superscript label": Case(_csv("ID,Labels\n" + GOOD_ROWS.replace("0,0\n", "0,\u00b2\n", 1)),
                                                ["submit"], "latest.csv: line 2 must be two integers", ("submissions/history.csv",)),
    "latest.csv with an id --0": Case(_csv("ID,Labels\n" + GOOD_ROWS.replace("0,0\n", "--0,0\n", 1)), ["submit"],
                                      "latest.csv: line 2 must be two integers", ("submissions/history.csv",)),
    "latest.csv with a 5,000-digit id": Case(_csv("ID,Labels\n" + GOOD_ROWS.replace("0,0\n", "9" * 5000 + ",0\n", 1)),
                                             ["submit"], "latest.csv: line 2 must be two integers", ("submissions/history.csv",)),
    "latest.csv not UTF-8": Case(_csv(b"ID,Labels\n" + GOOD_ROWS.encode().replace(b"0,0\n", b"0,\xff\n", 1)), ["submit"],
                                 "latest.csv: not UTF-8 text (byte 12)", ("submissions/history.csv",)),
    "latest.csv with a field over csv's limit": Case(_csv("ID,Labels\n0,\"" + "7" * 140_000 + "\"\n"), ["submit"],
                                                     "latest.csv: not a valid CSV (field larger than field limit", ("submissions/history.csv",)),
    "history.csv whose header is a key": Case(lambda p: [(p / "submissions").mkdir(exist_ok=True),
                                                         (p / "submissions/history.csv").write_text(f"{SECRET}\n")],
                                              ["reproduce", "abc123def456"], "history.csv: header must be", ()),
    # issue 29, a checkpoint's fields that reach plots, CSVs and the console:
    "checkpoint with a script as a class name": Case(lambda p: _checkpoint(p, "seed", class_names=[*CLASS_NAMES, SCRIPT]),
                                                     ["predict"], "models/final.pt: class_names are not CIFAR-10's 10 names in label order",
                                                     (str(CSV), "metrics/val_predictions.csv", "metrics/class_shares.csv")),
    "checkpoint with rich markup as a class name": Case(lambda p: _checkpoint(p, "seed", class_names=[*CLASS_NAMES, "[/x]"]),
                                                        ["predict"], "models/final.pt: class_names are not", (str(CSV),)),
    "checkpoint with a script as its TTA": Case(lambda p: _checkpoint(p, "seed", tta=SCRIPT), ["predict"],
                                                "models/final.pt: tta is not one of", (str(CSV),)),
    "checkpoint whose weight name retitles the terminal": Case(
        lambda p: _checkpoint(p, "seed", model_state={"\x1b]0;PWNED\x07\x1b[2K": torch.zeros(1)}),
        ["predict"], "models/final.pt: weights do not fit model", (str(CSV),)),
    "checkpoint with a text epoch": Case(lambda p: _checkpoint(p, "seed", epoch="1"), ["predict"],
                                         "models/final.pt: epoch is not a whole number", (str(CSV),)),
    "checkpoint with a NaN accuracy": Case(lambda p: _checkpoint(p, "seed", val_accuracy=float("nan")), ["predict"],
                                           "models/final.pt: val_accuracy is not a finite number", (str(CSV),)),
    "checkpoint with two means": Case(lambda p: _checkpoint(p, "seed", normalization={"mean": [0.5] * 2, "std": [0.25] * 3}),
                                      ["predict"], "models/final.pt: normalization is not", (str(CSV),)),
    "batches.meta with a name that is not UTF-8": Case(
        lambda p: (p / RAW / CIFAR_FOLDER / "batches.meta").write_bytes(python2_style_pickle(
            {b"label_names": [b"\xff\xfe"] * 10, b"num_cases_per_batch": 40, b"num_vis": 3072})),
        *PREPARE[:1], "batches.meta: b'label_names' are not UTF-8 text", PREPARE[1]),
    "dataset.json with a script as a class name": Case(
        lambda p: (p / PREPARED / "dataset.json").write_text((p / PREPARED / "dataset.json").read_text().replace('"truck"', json.dumps(SCRIPT))),
        ["train"], "dataset.json: class_names are not CIFAR-10's in label order", ("models/checkpoints",)),
    # issue 15, pickles and formats:
    "array with no bytes behind it": Case(_write(BATCH, _batch(data=_Array((300_000, 3072)))), *PREPARE[:1],
                                          "data_batch_1: refused: an array of shape (300000, 3072) uint8 takes 921,600,000 bytes", PREPARE[1]),
    "array whose data never came": Case(_write(BATCH, _batch(data=_Array((40, 3072)), batch_label=b"\0" * 200_000)),
                                        *PREPARE[:1], "data_batch_1: refused: an array whose data never came", PREPARE[1]),
    "array shorter than its shape": Case(_write(BATCH, _batch(data=_Array((40, 3072), b"\0" * 100))), *PREPARE[:1],
                                         "data_batch_1: refused: an array of shape (40, 3072) uint8 needs 122,880 bytes, found 100", PREPARE[1]),
    "ids beyond int64": Case(_write(CUSTOM, _custom(np.zeros((40, 32, 32, 3), np.uint8), IDS.astype(np.uint64) + 2**63)),
                             *PREPARE[:1], f"{CUSTOM_TEST_NAMES[0]}: b'ids' must be in 0–9223372036854775807", PREPARE[1]),
    # issue 15, fetch and archives:
    "zip bomb": Case(lambda p: [bomb := zipfile.ZipFile(p / "bomb.zip", "w", zipfile.ZIP_DEFLATED),
                                bomb.writestr(CUSTOM_TEST_NAMES[0], bytes(130 << 20)), bomb.close(),  # 130 MiB in 130 KB
                                _params("data:\n  source: local\n  path: bomb.zip\n")(p)], *FETCH[:1],
                     f"bomb.zip: refused member '{CUSTOM_TEST_NAMES[0]}': it unpacks to more than 128 MiB", FETCH[1]),
    "zip with an encrypted member": Case(lambda p: [_zip(Path("bundle.zip"), {CUSTOM_TEST_NAMES[0]: b"x"})(p),
                                                    (p / "bundle.zip").write_bytes((p / "bundle.zip").read_bytes().replace(  # the central directory's flag bit 0
                                                        b"PK\x01\x02\x14\x03\x14\x00\x00\x00", b"PK\x01\x02\x14\x03\x14\x00\x01\x00"))],
                                         *FETCH[:1], f"bundle.zip: member '{CUSTOM_TEST_NAMES[0]}' is encrypted", FETCH[1]),
    "zip with a thousand empty members": Case(_zip(Path("bundle.zip"), {f"junk/{i}": b"" for i in range(1001)}),
                                              *FETCH[:1], "bundle.zip: holds 1,001 members", FETCH[1]),
    "data.path is a device": Case(_params("data:\n  source: local\n  path: /dev/zero\n"), *FETCH[:1],
                                  "/dev/zero: not a regular file (a device, FIFO or socket)", FETCH[1]),
    "data.path is a FIFO": Case(lambda p: [os.mkfifo(p / "bundle.zip"), _params("data:\n  source: local\n  path: bundle.zip\n")(p)],
                                *FETCH[:1], "bundle.zip: not a regular file (a device, FIFO or socket)", FETCH[1]),
    "cifar_url with a password and a bad port": Case(
        _params("data:\n  source: url\n  cifar_url: http://user:hunter2@example.invalid:port/c.tar.gz\n"), *FETCH[:1],
        "http://***@example.invalid:port/c.tar.gz: not a valid URL (its host or port cannot be read)", FETCH[1]),
    "cifar_url with a token, not http(s)": Case(
        _params("data:\n  source: url\n  cifar_url: ftp://example.invalid/c.tar.gz?token=hunter2\n"), *FETCH[:1],
        "ftp://example.invalid/c.tar.gz?token=***: not an http:// or https:// URL", FETCH[1]),
    "data/raw links to a missing folder": Case(
        lambda p: [(p / RAW).symlink_to(p / "unmounted" / "cifar"), _params("data:\n  source: synthetic\n")(p)],
        *FETCH[:1], "which is not a folder (an unmounted drive?)", FETCH[1]),
    # issue 15, params, checkpoints and records:
    "params: an infinite lr": Case(_params("train:\n  lr: .inf\n"), ["train"],
                                   "train.lr must be a finite number, found inf", ("models/checkpoints",)),
    "params: NaN label smoothing": Case(_params("train:\n  label_smoothing: .nan\n"), ["train"],
                                        "train.label_smoothing must be a finite number", ("models/checkpoints",)),
    "params: epochs of 10^30": Case(_params("train:\n  epochs: " + "1" + "0" * 30 + "\n"), ["train"],
                                    "train.epochs must be in [1, 10,000]", ("models/checkpoints",)),
    "params: a negative seed": Case(_params("train:\n  seed: -1\n"), ["train"],
                                    "train.seed must be in [0, 2^32), found -1", ("models/checkpoints",)),
    "params: a seed of 2^32": Case(_params("prepare:\n  seed: 4294967296\n"), *PREPARE[:1],
                                   "prepare.seed must be in [0, 2^32)", PREPARE[1]),
    "params: a key given twice": Case(_params("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n"), ["train"],
                                      "'lr' appears twice", ("models/checkpoints",)),
    "params: not UTF-8": Case(_write(Path("params.yaml"), b"train:\n  lr: 0.1  # \xff\n"), ["train"],
                              "params.yaml: not UTF-8 text", ("models/checkpoints",)),
    "checkpoint whose config is gigabytes": Case(_huge_checkpoint, ["predict"],
                                                 "over the budget model.max_params = 5,000,000", (str(CSV),)),
    "history row whose run_id is a path": Case(_history("run_id", "../../../escape"), ["reproduce", "escape"],
                                               "line 2: run_id is not a valid run_id", ("../escape",)),
    "history row whose commit is an option": Case(_history("commit", "--output=x"), ["reproduce", "abc123def456"],
                                                  "line 2: commit is not a valid commit", ("x",)),
    "profile given as a path": Case(lambda p: (p / "evil.yaml").write_text("model: {}\ntrain: {}\n"),
                                    ["profile", "../../evil"], "no such profile", ()),
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
    captured = capsys.readouterr()
    err = captured.err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert SECRET not in err + captured.out and SCRIPT not in err + captured.out
    assert "\x1b" not in err and "\x07" not in err  # no terminal control from a file's bytes
    for output in case.absent:
        assert not (project / output).exists(), output
    assert not _leftovers(project)


def test_the_corpus_has_at_least_forty_five_distinct_cases() -> None:
    assert len(CASES) >= 45


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


def test_the_consoles_print_paths_and_kaggle_text_as_text(capsys: pytest.CaptureFixture) -> None:
    """One cause behind five crashes (`[/x]` in a score, a source path, a competition slug, a
    project folder `cifar[v2]`, a profile file `[red]mine.yaml` in doctor): console.print read
    data as rich markup. The consoles read none, so no call site can forget an escape()."""
    import re

    from rich.table import Table

    from pipeline.reporting import console, table_console, warn

    console.print("reproduce: ../cifar[v2]-runs/x [/x] [bold]y")
    warn("a [/] b")
    table = Table(title="submissions to comp[/x]")
    table.add_column("public")
    table.add_row("[/x][bold]0.9")
    table_console().print(table)
    said = capsys.readouterr()
    assert "../cifar[v2]-runs/x [/x] [bold]y" in said.err and "warning: a [/] b" in said.err
    assert "comp[/x]" in said.out and "[/x][bold]0.9" in said.out
    for path in (REPO_ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        assert "rich.markup" not in text, f"{path}: escape() is not needed, nor right"
        assert not re.search(r"""["']\[(yellow|red|bold|green)\]""", text), f"{path}: markup"
