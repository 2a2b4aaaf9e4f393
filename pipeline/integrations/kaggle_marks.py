"""Our submissions as Kaggle lists them: the description submit writes, the run a listed
submission came from, and its score as text.

A submission is a run's by submit's marks only: the file it uploads is `<run_id>.csv`, and the
description starts with `run <run_id> @ <commit>` (Kaggle may cut a long description's end, so
the mark goes first; submits before put it last). A description that merely mentions a run id
(a manual upload's "better than run ...") is not that run's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kagglesdk.competitions.types.competition_api_service import ApiSubmission

RUN_MARK = re.compile(
    r"^run (?P<first>[0-9a-f]{12}) @ \S+( \||$)|\| run (?P<last>[0-9a-f]{12}) @ \S+$"
)
UPLOAD_NAME = re.compile(r"(?P<run>[0-9a-f]{12})\.csv")  # submit uploads <run_id>.csv


def submission_description(run_id: str, short_commit: str, message: str) -> str:
    """What submit sends as the submission's description: the run first, then the message."""
    return f"run {run_id} @ {short_commit} | {message}"


def run_of_submission(description: object, file_name: object) -> str | None:
    """The run_id a Kaggle submission came from, by submit's marks: its file is `<run_id>.csv`
    (the upload's name, and predict's copy of a run's CSV), or its description begins with
    `run <run_id> @ <commit>` (ends, for older submits). None for anything else."""
    if isinstance(file_name, str) and (upload := UPLOAD_NAME.fullmatch(file_name)):
        return upload.group("run")  # every submit uploads so: the surest mark
    if isinstance(description, str) and (mark := RUN_MARK.search(description)):
        return mark.group("first") or mark.group("last")
    return None


def find_submission(submissions: list, run_id: str, refs_before: set[int]) -> int | None:
    """The ref of a submission of run `run_id` (by submit's marks: a description Kaggle cut
    short still counts) that is not one of `refs_before`, or None."""
    found = [
        s.ref for s in submissions
        if s.ref not in refs_before and run_of_submission(s.description, s.file_name) == run_id
    ]  # fmt: skip
    return found[0] if found else None


def score_text(submission: ApiSubmission, which: str) -> str:
    """A submission's `which` ("public" or "private") score as text, "" when it has none.
    Kaggle sends a string; a number (another server's) is kept as kagglesdk stored it, where
    its getter (`value or ""`) turns a score of exactly 0 into "none"."""
    stored = getattr(submission, f"_{which}_score", None)
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return f"{stored:g}"
    return str(getattr(submission, f"{which}_score", "") or "")
