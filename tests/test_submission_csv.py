"""The submission CSV: every defect a user can meet is caught, and a bad file never lands."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.records.submission_csv import (
    MAX_SUBMISSION_BYTES,
    read_submission,
    validate_submission,
    write_submission,
)

IDS = np.arange(5)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "submission.csv"
    path.write_text(text)
    return path


def test_written_submission_is_valid_and_in_id_order(tmp_path: Path) -> None:
    path = tmp_path / "latest.csv"
    write_submission(path, np.array([3, 1, 2]), np.array([9, 0, 4]))
    assert path.read_text() == "ID,Labels\n3,9\n1,0\n2,4\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "header must be ID,Labels; the file is empty"),
        (
            "id,label\n0,1\n1,1\n2,1\n3,1\n4,1\n",
            r"header must be ID,Labels; its first line is something else \(not shown\)",
        ),
        ("ID,Labels\n0,1\n1,1\n", "expected 5 rows"),
        ("ID,Labels\n0,1\n1,1\n2,1\n3,1\n4,1\n5,1\n", "expected 5 rows"),
        ("ID,Labels\n0,1\n1,1\n1,1\n3,1\n4,1\n", "line 4: id 1 appears twice"),
        ("ID,Labels\n0,1\n1,1\n2,10\n3,1\n4,1\n", "label 10 is outside 0–9"),
        ("ID,Labels\n0,1\n1,cat\n2,1\n3,1\n4,1\n", "line 3 must be two integers"),
        ("ID,Labels\n0,1\n1,1.0\n2,1\n3,1\n4,1\n", "line 3 must be two integers"),
        ("ID,Labels\n0,1\n1,1\n2,1\n3,1\n9,1\n", r"missing \[4\], unknown \[9\]"),
        ("ID,Labels\n0,1\n1,1\n2,1\n3,1\n4,1,7\n", "line 6 must be two integers"),
    ],
)
def test_each_csv_defect_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(PipelineError, match=expected):
        validate_submission(_write(tmp_path, text), IDS)


def test_a_failing_write_leaves_the_previous_csv_untouched(tmp_path: Path) -> None:
    path = tmp_path / "latest.csv"
    write_submission(path, IDS, np.zeros(5, dtype=int))
    before = path.read_text()
    with pytest.raises(PipelineError):
        write_submission(path, IDS, np.array([0, 1, 2, 3, 11]))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.csv"]


SECRET = "hunter2-kaggle-key"


@pytest.mark.parametrize(
    "text",
    [
        f"{SECRET}\n0,1\n",
        f"ID,Labels\n0,{SECRET}\n1,1\n2,1\n3,1\n4,1\n",
        f"ID,Labels\n{SECRET},1\n1,1\n2,1\n3,1\n4,1\n",
        f"ID,Labels\n0,1,{SECRET}\n1,1\n2,1\n3,1\n4,1\n",
        f'ID,Labels\n0,"{SECRET}\x00"\n',
    ],
)
def test_a_refused_csv_never_shows_its_content(tmp_path: Path, text: str) -> None:
    with pytest.raises(PipelineError) as refused:
        validate_submission(_write(tmp_path, text), IDS)
    assert SECRET not in str(refused.value)
    assert "submission.csv" in str(refused.value)


def test_submit_reads_a_regular_file_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "ID,Labels\n0,1\n")
    assert read_submission(path) == b"ID,Labels\n0,1\n"


def _cache_object(cache: Path, content: bytes) -> Path:
    digest = hashlib.md5(content).hexdigest()
    path = cache / "files/md5" / digest[:2] / digest[2:]
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


def test_a_link_out_of_the_dvc_cache_is_refused_one_into_it_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "home/.kaggle/kaggle.json"
    secret.parent.mkdir(parents=True)
    secret.write_text(f'{{"key": "{SECRET}"}}')
    cache = tmp_path / "project/.dvc/cache"
    cached = _cache_object(cache, b"ID,Labels\n0,1\n")
    outside, inside = tmp_path / "outside.csv", tmp_path / "inside.csv"
    outside.symlink_to(secret)
    inside.symlink_to(cached)  # what DVC's `cache.type: symlink` makes of an output
    refused_link = "a symbolic link to a file that is not an object of this project's DVC cache"
    with pytest.raises(PipelineError, match=refused_link) as refused:
        read_submission(outside, cache)
    assert SECRET not in str(refused.value)
    with pytest.raises(PipelineError, match=refused_link):
        read_submission(inside)  # no cache known: no link is trusted
    assert read_submission(inside, cache) == b"ID,Labels\n0,1\n"
    # `dvc cache dir` set to the home folder (a config anyone can edit) trusts nothing more
    with pytest.raises(PipelineError, match=refused_link):
        read_submission(outside, tmp_path / "home")
    # nor does a file put under a cache object's name whose content is not that name's md5
    forged = cache / "files/md5/00" / ("0" * 30)
    forged.parent.mkdir()
    forged.write_text(secret.read_text())
    outside.unlink()
    outside.symlink_to(forged)
    with pytest.raises(PipelineError, match="does not match its name") as refused:
        read_submission(outside, cache)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("field", ["1\x1c", "\x1f2", "1\u2028"])
def test_separator_characters_around_a_number_are_refused_not_a_traceback(
    tmp_path: Path, field: str
) -> None:
    text = f"ID,Labels\n0,{field}\n1,1\n2,1\n3,1\n4,1\n"
    with pytest.raises(PipelineError, match="line 2 must be two integers"):
        validate_submission(_write(tmp_path, text), IDS)


def test_a_fifo_a_folder_and_a_huge_file_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo, folder, huge = tmp_path / "fifo.csv", tmp_path / "folder.csv", tmp_path / "huge.csv"
    os.mkfifo(fifo)  # opening it for reading would block forever without a writer
    folder.mkdir()
    with huge.open("wb") as handle:
        handle.truncate(MAX_SUBMISSION_BYTES + 1)
    with pytest.raises(PipelineError, match="fifo.csv: not a regular file"):
        read_submission(fifo)
    with pytest.raises(PipelineError, match="folder.csv: a folder"):
        read_submission(folder)
    with pytest.raises(PipelineError, match="huge.csv: over 16 MiB"):
        read_submission(huge)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("ID,Labels\n0,\u00b2\n1,1\n2,1\n3,1\n4,1\n".encode(), "line 2 must be two integers"),
        (b"ID,Labels\n--0,1\n1,1\n2,1\n3,1\n4,1\n", "line 2 must be two integers"),
        (b"ID,Labels\n0,\xff\n1,1\n2,1\n3,1\n4,1\n", r"not UTF-8 text \(byte 12\)"),
        (b"ID,Labels\n0," + b"1" * 140_000 + b"\n1,1\n2,1\n3,1\n4,1\n", "not a valid CSV"),
    ],
)
def test_hand_edited_csvs_are_one_line_not_a_traceback(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    """Issue 29's round: a `²` label, an id `--0`, non-UTF-8 bytes, a field over csv's 131,072."""
    path = tmp_path / "latest.csv"
    path.write_bytes(data)
    with pytest.raises(PipelineError, match=expected):
        validate_submission(path, IDS)
