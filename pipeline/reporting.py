"""Console output and progress bars (rich), shared by every stage.

The consoles read no rich markup: what they print holds paths, params, checkpoint fields and
Kaggle's text, and a `[/x]` there crashed a command, or a `[bold]` restyled it. Colour is a
`style=` argument (`warn`), never markup in the text.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, soft_wrap=True, markup=False)  # long paths stay on one line
TABLE_WIDTH = 180  # characters for tables on stdout when it is not a terminal (a pipe, a log)


def table_console() -> Console:
    """stdout for tables (scores, experiments): the terminal's width, else TABLE_WIDTH, so a
    piped table keeps its columns instead of rich's 80-character default."""
    output = Console(markup=False)
    return output if output.is_terminal else Console(width=TABLE_WIDTH, markup=False)


def warn(text: str) -> None:
    """`warning: text` in yellow on stderr (text, never markup)."""
    console.print(f"warning: {text}", style="yellow")


def download_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def training_progress() -> Progress:
    """Epoch and batch bars; the batch bar's fields carry loss, accuracy and images/s."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
