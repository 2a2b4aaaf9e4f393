"""The submission CSV: `ID,Labels`, one row per custom-test id, integer labels 0–9.

`write_submission` writes to a temporary file, validates it against the ids it must cover, and
only then renames it into place, so a defective CSV never replaces a good one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.classes import NUM_CLASSES
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

HEADER = ["ID", "Labels"]


def validate_submission(path: Path, expected_ids: np.ndarray) -> None:
    """Raise `PipelineError` naming the first defect: header, row count, ids, labels."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != HEADER:
        found = rows[0] if rows else "an empty file"
        raise PipelineError(f"{path}: header must be {','.join(HEADER)}, found {found}")
    body = rows[1:]
    if len(body) != len(expected_ids):
        raise PipelineError(
            f"{path}: expected {len(expected_ids)} rows (one per id), found {len(body)}"
        )
    seen: set[int] = set()
    for line_number, row in enumerate(body, start=2):
        if (
            len(row) != 2
            or not row[0].strip().lstrip("-").isdigit()
            or not row[1].strip().isdigit()
        ):
            raise PipelineError(
                f"{path}: line {line_number} must be two integers 'ID,Labels', found {row}"
            )
        row_id, label = int(row[0]), int(row[1])
        if not 0 <= label < NUM_CLASSES:
            raise PipelineError(
                f"{path}: line {line_number}: label {label} is outside 0–{NUM_CLASSES - 1}"
            )
        if row_id in seen:
            raise PipelineError(f"{path}: line {line_number}: id {row_id} appears twice")
        seen.add(row_id)
    expected = {int(i) for i in expected_ids}
    if seen != expected:
        missing, unknown = sorted(expected - seen)[:5], sorted(seen - expected)[:5]
        raise PipelineError(
            f"{path}: ids differ from the custom test's: missing {missing}, unknown {unknown}"
        )


def write_submission(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """Write rows in the custom test's id order; validate before replacing `path`."""
    with atomic_path(path) as temp_path:
        with temp_path.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(zip(ids.tolist(), labels.tolist(), strict=True))
        validate_submission(temp_path, ids)
