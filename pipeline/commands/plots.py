"""`python -m pipeline plots [REV ...]`: `dvc plots show` (with revisions, `dvc plots diff REV …`)
once every plot file it would draw has been read and found to hold only numbers and labels.

dvc-render copies a plot file's rows unescaped into a `<script>` of `dvc_plots/index.html`. The
stages check every field they write (records/plot_csv.py), but the plot files are committed to
git (`cache: false`): a commit pulled from someone else, or a revision `dvc plots diff` reads,
holds whatever was committed, and a field holding `</script><script>…` would run in the browser
of whoever opens the page. So each plot file dvc.yaml declares (each revision's own dvc.yaml)
is checked first, in the workspace and in each revision; one that fails stops before DVC
writes anything, naming the file, row and column, not the text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from pipeline.config.yaml_files import parse_yaml
from pipeline.errors import PipelineError
from pipeline.integrations.repository import dvc, git
from pipeline.records.plot_csv import PLAIN_LABEL

DVC_YAML = "dvc.yaml"


def declared_plots(dvc_yaml_text: str, where: str) -> list[str]:
    """The paths a dvc.yaml's plots draw: its stages' `plots:` and the top-level plots' files."""
    data = parse_yaml(dvc_yaml_text, where) or {}
    names: list[str] = []

    def add(entries: object) -> None:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, dict):
                for name, props in entry.items():
                    y = props.get("y") if isinstance(props, dict) else None
                    names.extend(y if isinstance(y, dict) else [name])  # {file: column}

    stages = data.get("stages") if isinstance(data, dict) else None
    for stage in (stages or {}).values() if isinstance(stages, dict) else []:
        if isinstance(stage, dict):
            add(stage.get("plots"))
    add(data.get("plots") if isinstance(data, dict) else None)
    return sorted({str(name) for name in names})


def check_plot_text(text: str, where: str) -> None:
    """Every field a number or a plain label, else one error naming the row and column."""
    delimiter = "\t" if where.endswith(".tsv") else ","
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as error:  # a NUL byte, a field over csv's limit
        raise PipelineError(f"{where}: not a plot file dvc can draw ({error})") from None
    for row_number, row in enumerate(rows, start=1):
        for column, field in enumerate(row, start=1):
            if not (is_number(field) or PLAIN_LABEL.fullmatch(field)):
                raise PipelineError(
                    f"{where}: row {row_number}, column {column} is neither a number nor a plain "
                    "label (not shown); `dvc plots show` would put it unescaped into "
                    "dvc_plots/index.html, so nothing was drawn: restore the file from a "
                    "commit you trust, or rerun the stage that writes it"
                )


def is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return field == field.strip()


def check_tree(files: Callable[[str], list[str]], read: Callable[[str], str], label: str) -> None:
    """Check the plot files of one tree: `files(path)` lists the files at or under a path
    ([] when absent), `read(file)` gives one's text."""
    if not files(DVC_YAML):
        return
    for declared in declared_plots(read(DVC_YAML), f"{label}{DVC_YAML}"):
        for name in files(declared):  # a declared folder: every file in it
            check_plot_text(read(name), f"{label}{name}")


def workspace_files(path: str) -> list[str]:
    found = Path(path)
    if found.is_dir():
        return sorted(str(item) for item in found.rglob("*") if item.is_file())
    return [path] if found.is_file() else []


def workspace_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: cannot be read as UTF-8 text ({error})") from None


def revision_tree(revision: str) -> tuple[Callable[[str], list[str]], Callable[[str], str]]:
    """`files` and `read` of a commit's tree (git's, nothing checked out)."""
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except PipelineError:
        raise PipelineError(f"plots: {revision!r} is not a git revision") from None

    def files(path: str) -> list[str]:
        return git("ls-tree", "-r", "--name-only", commit, "--", path).splitlines()

    def read(path: str) -> str:
        return git("show", f"{commit}:{path}", strip=False)

    return files, read


def run(revisions: list[str]) -> int:
    check_tree(workspace_files, workspace_text, "")
    for revision in revisions:
        check_tree(*revision_tree(revision), f"{revision}:")
    command = ["plots", "diff", *revisions] if revisions else ["plots", "show"]
    return dvc(*command, capture=False).returncode
