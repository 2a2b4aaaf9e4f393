"""Console output and progress bars (rich), shared by every stage."""

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

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line in logs
TABLE_WIDTH = 180  # characters for tables on stdout when it is not a terminal (a pipe, a log)


def table_console() -> Console:
    """stdout for tables (scores, experiments): the terminal's width, else TABLE_WIDTH, so a
    piped table keeps its columns instead of rich's 80-character default."""
    output = Console()
    return output if output.is_terminal else Console(width=TABLE_WIDTH)


def download_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
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
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
