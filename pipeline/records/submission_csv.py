"""The submission CSV: `ID,Labels`, one row per custom-test id, integer labels 0–9.

`write_submission` writes to a temporary file, validates it against the ids it must cover, and
only then renames it into place, so a defective CSV never replaces a good one.
`read_submission` is how submit takes the file: a regular file (or DVC's symlink into its own
cache), read once, so the bytes validated, hashed and uploaded are the same bytes.

Messages name lines, fields and counts, never the text they could not read: a file linked in by
mistake (`latest.csv -> ~/.kaggle/kaggle.json`) must not print a key to a terminal or a CI log.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from pathlib import Path

import numpy as np

from pipeline.classes import NUM_CLASSES
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

HEADER = ["ID", "Labels"]
# 10,000 rows of "9999,9" are about 70 KB; a file 200 times that is not a submission
MAX_SUBMISSION_BYTES = 16 << 20
MAX_DIGITS = 19  # an id fits int64; int() refuses over 4,300 digits with a traceback
CACHE_NAME = re.compile(r"[0-9a-f]{32}")  # DVC 3's files/md5/ab/cdef… objects
ASCII_DIGITS = frozenset("0123456789")  # str.isdigit() also takes '²' and '٣', which int() refuses


def _whole_number(field: str, signed: bool) -> int | None:
    """`field` as an int when it is plain ASCII digits (one leading '-' if `signed`), else None."""
    digits = field.strip(" \t")  # str.strip() would also take \x1c-\x1f and \u2028
    negative = signed and digits.startswith("-")
    digits = digits[1:] if negative else digits
    if not digits or len(digits) > MAX_DIGITS or not set(digits) <= ASCII_DIGITS:
        return None
    return -int(digits) if negative else int(digits)  # what was checked, not `field` itself


def check_submission_text(where: object, text: str, expected_ids: np.ndarray) -> list[int]:
    """The labels in row order, or `PipelineError` naming the first defect: header, row count,
    ids, labels. `where` names the file in the message; its content never appears there."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:  # a NUL byte, a field over csv's limit: its words hold no content
        raise PipelineError(f"{where}: not a valid CSV ({error}); rerun `dvc repro`") from None
    if not rows or rows[0] != HEADER:
        found = "the file is empty" if not rows else "its first line is something else (not shown)"
        raise PipelineError(f"{where}: header must be {','.join(HEADER)}; {found}")
    body = rows[1:]
    if len(body) != len(expected_ids):
        raise PipelineError(
            f"{where}: expected {len(expected_ids)} rows (one per id), found {len(body)}"
        )
    seen: set[int] = set()
    labels = []
    for line_number, row in enumerate(body, start=2):
        row_id = _whole_number(row[0], signed=True) if len(row) == 2 else None
        label = _whole_number(row[1], signed=False) if len(row) == 2 else None
        if row_id is None or label is None:
            raise PipelineError(
                f"{where}: line {line_number} must be two integers 'ID,Labels', found "
                f"{len(row)} field(s) that are not (content not shown)"
            )
        if not 0 <= label < NUM_CLASSES:
            raise PipelineError(
                f"{where}: line {line_number}: label {label} is outside 0–{NUM_CLASSES - 1}"
            )
        if row_id in seen:
            raise PipelineError(f"{where}: line {line_number}: id {row_id} appears twice")
        seen.add(row_id)
        labels.append(label)
    expected = {int(i) for i in expected_ids}
    if seen != expected:
        missing, unknown = sorted(expected - seen)[:5], sorted(seen - expected)[:5]
        raise PipelineError(
            f"{where}: ids differ from the custom test's: missing {missing}, unknown {unknown}"
        )
    return labels


def decode_submission(where: object, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"{where}: not UTF-8 text (byte {error.start}); rerun `dvc repro` to write it again"
        ) from None


def validate_submission(path: Path, expected_ids: np.ndarray) -> list[int]:
    """`check_submission_text` on a file; the labels in row order."""
    return check_submission_text(
        path, decode_submission(path, Path(path).read_bytes()), expected_ids
    )


def read_submission(path: Path, link_folder: Path | None = None) -> bytes:
    """The bytes of the CSV at `path`, which must be a regular file, or a symlink into
    `link_folder` (DVC's cache, whose `cache.type: symlink` links outputs into it)."""
    rerun = "submit sends only the CSV predict wrote: rerun `dvc repro`"
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro` first") from None
    opened = Path(path)
    cache_md5 = None  # a link must point at a DVC cache object: files/md5/<2 hex>/<30 hex>
    if is_link:
        opened = Path(os.path.realpath(path))
        inside = link_folder is not None and opened.is_relative_to(os.path.realpath(link_folder))
        parts = opened.relative_to(os.path.realpath(link_folder)).parts if inside else ()
        if (
            len(parts) == 4
            and parts[:2] == ("files", "md5")
            and CACHE_NAME.fullmatch("".join(parts[2:]))
        ):
            cache_md5 = "".join(parts[2:])
        else:
            raise PipelineError(
                f"{path}: a symbolic link to a file that is not an object of this project's DVC "
                f"cache; {rerun}"
            )
    # O_NOFOLLOW: a link swapped in after the check is refused; O_NONBLOCK: a FIFO never blocks
    try:
        descriptor = os.open(opened, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise PipelineError(f"{path}: cannot be read ({error.strerror}); {rerun}") from None
    kind = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(kind):
        os.close(descriptor)
        what = "a folder" if stat.S_ISDIR(kind) else "not a regular file"
        raise PipelineError(f"{path}: {what}; {rerun}")
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(MAX_SUBMISSION_BYTES + 1)
    if len(data) > MAX_SUBMISSION_BYTES:
        raise PipelineError(
            f"{path}: over {MAX_SUBMISSION_BYTES >> 20} MiB, far larger than a submission; {rerun}"
        )
    # a cache object's name is its md5: so it is one, whatever `dvc cache dir` was set to
    if cache_md5 is not None and hashlib.md5(data).hexdigest() != cache_md5:
        raise PipelineError(
            f"{path}: links to a DVC cache object whose content does not match its name; {rerun}"
        )
    return data


def write_submission(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """Write rows in the custom test's id order; validate before replacing `path`."""
    with atomic_path(path) as temp_path:
        with temp_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(zip(ids.tolist(), labels.tolist(), strict=True))
        validate_submission(temp_path, ids)
