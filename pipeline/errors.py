"""The one exception type for failures a user can fix (bad file, bad param, missing credentials).

`python -m pipeline` prints these as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure, worded for the person running the pipeline: what, where, what to do."""
