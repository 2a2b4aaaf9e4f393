"""The one exception type for failures a user can fix (bad file, bad param, missing credentials).

`python -m pipeline` prints these as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure, worded for the person running the pipeline: what, where, what to do."""


def printable(text: str) -> str:
    """`text` with control characters written as escapes (`\\x1b`): a message stays one line,
    and a file's bytes cannot move the cursor, retitle or recolour the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
