"""submissions/history.csv: one row per Kaggle submission, the link from a score back to its run.

`submit` appends a row (time, run_id, commit, CSV md5, competition, message, Kaggle's reference,
and which refusals `--force` overrode); `scores` joins the rows with Kaggle's list; `reproduce`
finds a run's commit here. The file is git-tracked: commit it after each submission. It holds no
credentials: its fields are the ones below, filled from the run, never from the environment.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic
from pipeline.paths import HISTORY_PATH

FIELDS = (
    "submitted_utc", "run_id", "commit", "csv_md5", "competition", "message", "kaggle_ref",
    "forced",
)  # fmt: skip
MIN_KEY_LENGTH = 4  # hex characters: shorter run_id / md5 prefixes match too much


# What each field may hold: a row that says otherwise was damaged or written by hand, and its
# run_id names a folder (`reproduce`) and its commit a git revision, so both are checked.
FIELD_PATTERNS = {
    "run_id": re.compile(r"[0-9a-f]{12}"),
    "commit": re.compile(r"([0-9a-f]{40}|[0-9a-f]{64})?"),  # empty: submitted outside git
    "csv_md5": re.compile(r"[0-9a-f]{32}"),
    "kaggle_ref": re.compile(r"[0-9]{0,20}"),
}
MAX_FIELD_CHARACTERS = 2000  # a message or competition slug longer than this is not ours


def check_row(path: Path, line_number: int, row: dict) -> None:
    """A row as read_history accepts it (every field, each of its kind), else one error."""
    if None in row or None in row.values():
        raise PipelineError(
            f"{path}: line {line_number} does not have the {len(FIELDS)} fields {','.join(FIELDS)}"
        )
    for field, value in row.items():
        if len(value) > MAX_FIELD_CHARACTERS:
            raise PipelineError(
                f"{path}: line {line_number}: {field} is {len(value):,} characters long "
                f"(at most {MAX_FIELD_CHARACTERS:,})"
            )
        pattern = FIELD_PATTERNS.get(field)
        if pattern is not None and not pattern.fullmatch(value):
            raise PipelineError(
                f"{path}: line {line_number}: {field} is not a valid {field} (not shown: a "
                "damaged or hand-edited row); restore history.csv from git"
            )


def read_history(path: Path = HISTORY_PATH) -> list[dict[str, str]]:
    """The rows, oldest first, each field checked; no file means no submissions yet."""
    if not path.exists():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != FIELDS:
                raise PipelineError(
                    f"{path}: header must be {','.join(FIELDS)}; its first line is something "
                    "else (not shown); restore history.csv from git"
                )
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise PipelineError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:  # a field over csv's size limit, a NUL byte
        raise PipelineError(f"{path}: not a valid CSV ({error})") from None
    for line_number, row in enumerate(rows, start=2):
        check_row(path, line_number, row)
    return rows


def append_history(row: dict[str, str], path: Path = HISTORY_PATH) -> None:
    """Add `row` at the end; the file is rewritten whole (temp + rename), never half-appended."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing:
        read_history(path)  # refuse to append to a file with another layout
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerow({field: row.get(field, "") for field in FIELDS})
    separator = "" if not existing or existing.endswith("\n") else "\n"
    write_text_atomic(path, existing + separator + buffer.getvalue())


def find_rows(rows: list[dict[str, str]], key: str) -> list[dict[str, str]]:
    """Rows whose run_id or CSV md5 starts with `key`, or whose Kaggle reference equals it."""
    key = key.strip().lower()
    by_ref = [row for row in rows if row["kaggle_ref"] == key]
    if by_ref or len(key) < MIN_KEY_LENGTH:
        return by_ref
    return [row for row in rows if row["run_id"].startswith(key) or row["csv_md5"].startswith(key)]
