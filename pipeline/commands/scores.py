"""`python -m pipeline scores`: Kaggle's scores beside the runs that made them.

Reads every submission of the account to `data.competition` through the kaggle client and joins
each with submissions/history.csv (by Kaggle's reference, else by the run_id in its message) and
with its run's manifest (working tree, else the commit's): date, run_id, commit, model, params,
validation accuracy, TTA, public and private score, status. History rows that Kaggle does not
list (another account, or deleted) are shown too, marked so.
"""

from __future__ import annotations

from rich.table import Table

from pipeline.errors import PipelineError
from pipeline.integrations import kaggle_client, kaggle_marks
from pipeline.paths import HISTORY_PATH
from pipeline.records.history import read_history
from pipeline.records.manifest import load_manifest
from pipeline.reporting import table_console

COLUMNS = (
    "date", "kaggle_ref", "run_id", "commit", "model", "params", "val_accuracy", "tta",
    "public", "private", "status",
)  # fmt: skip
MISSING = "—"


def _manifest_fields(run_id: str, commit: str) -> dict[str, str]:
    try:
        manifest = load_manifest(run_id, commit or None) if run_id else None
    except PipelineError:  # a damaged manifest must not hide the scores
        return {"model": "unreadable manifest"}
    if manifest is None:
        return {}
    return {
        "model": manifest.model or MISSING,
        "params": f"{manifest.model_params:,}" if manifest.model_params else MISSING,
        "val_accuracy": f"{manifest.val_accuracy:.4f}"
        if manifest.val_accuracy is not None
        else MISSING,
        "tta": manifest.tta or MISSING,
    }


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)


def score_rows(
    submissions: list, history: list[dict[str, str]], competition: str
) -> list[dict[str, str]]:
    """One row per Kaggle submission (newest first), then the history rows Kaggle did not list."""
    history = [row for row in history if row["competition"] == competition]
    by_ref = {row["kaggle_ref"]: row for row in history}
    by_run = {row["run_id"]: row for row in history}
    rows, listed_refs = [], set()
    for item in submissions:
        listed_refs.add(str(item.ref))
        record = by_ref.get(str(item.ref))
        if record is None and (
            run := kaggle_marks.run_of_submission(item.description, item.file_name)
        ):
            record = by_run.get(run, {"run_id": run, "commit": ""})
        record = record or {}
        status = getattr(item.status, "name", str(item.status)).lower()
        if item.error_description:
            status += f": {kaggle_client.redact(str(item.error_description))}"  # Kaggle's text
        rows.append({
            "date": item.date.strftime("%Y-%m-%d %H:%M") if item.date else MISSING,
            "kaggle_ref": str(item.ref),
            "run_id": record.get("run_id") or MISSING,
            "commit": (record.get("commit") or MISSING)[:7],
            "public": _text(kaggle_marks.score_text(item, "public")),
            "private": _text(kaggle_marks.score_text(item, "private")),
            "status": status,
        } | _manifest_fields(record.get("run_id", ""), record.get("commit", "")))  # fmt: skip
    for record in history:
        if record["kaggle_ref"] not in listed_refs:
            rows.append({
                "date": record["submitted_utc"][:16].replace("T", " "),
                "kaggle_ref": record["kaggle_ref"], "run_id": record["run_id"],
                "commit": record["commit"][:7], "status": "not listed by Kaggle",
            } | _manifest_fields(record["run_id"], record["commit"]))  # fmt: skip
    return [{column: row.get(column, MISSING) for column in COLUMNS} for row in rows]


def run(competition: str) -> list[dict[str, str]]:
    history = read_history(HISTORY_PATH)
    api = kaggle_client.connect("scores")
    rows = score_rows(kaggle_client.list_submissions(api, competition), history, competition)
    table = Table(title=f"Kaggle submissions to {competition}")
    for column in COLUMNS:
        table.add_column(
            column, justify="right" if column in ("params", "public", "private") else "left"
        )
    for row in rows:
        table.add_row(*(row[column] for column in COLUMNS))  # text, not rich markup
    console = table_console()
    console.print(table if rows else f"no submissions to {competition} yet")
    return rows
