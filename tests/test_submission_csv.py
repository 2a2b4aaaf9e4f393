"""The submission CSV: every defect a user can meet is caught, and a bad file never lands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.records.submission_csv import validate_submission, write_submission

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
        ("", "header must be ID,Labels, found an empty file"),
        (
            "id,label\n0,1\n1,1\n2,1\n3,1\n4,1\n",
            r"header must be ID,Labels, found \['id', 'label'\]",
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
