"""The CSV files `dvc plots show` draws (select's candidates, predict's class plots): every field
checked before it is written.

dvc-render puts a plot's rows as they are into a <script> of `dvc_plots/index.html`, and does not
escape `</script>` there: a field holding `</script><script>…` would run in the browser of whoever
opens the page. So a text field here is a plain label (letters, digits, spaces, `_ . + - ( )`),
and a number is a Python number; anything else stops the stage before the file changes.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic

PLAIN_LABEL = re.compile(r"[A-Za-z0-9 _.+()-]{1,64}")  # nothing HTML, JSON or rich reads as markup
Field = str | int | float


def plain_field(value: Field, path: Path, row_number: int, column: str) -> str:
    """`value` as the text written, or `PipelineError` naming the row and column, not the value."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problem = f"a {type(value).__name__}, not a label or a number"
    elif isinstance(value, (int, float)):  # nan and inf too: a diverged run's loss is plotted
        return str(value)
    elif PLAIN_LABEL.fullmatch(value):
        return value
    else:
        problem = "not a plain label (letters, digits, spaces, _ . + - ( ), at most 64)"
    raise PipelineError(
        f"{path}: refused to write row {row_number}, column {column}: {problem}; it would reach "
        "`dvc plots show`'s page unescaped (a damaged or hostile checkpoint or file name?)"
    )


def write_plot_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Field]]) -> None:
    """Write `header` and `rows`, each field checked, whole or not at all."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow([plain_field(name, path, 1, name) for name in header])
    for row_number, row in enumerate(rows, start=2):
        writer.writerow(  # a row of another length is a bug: strict zip raises
            [
                plain_field(value, path, row_number, name)
                for value, name in zip(row, header, strict=True)
            ]
        )
    write_text_atomic(path, table.getvalue())
