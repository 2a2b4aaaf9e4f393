"""What submit checks before it sends a CSV: that it is the last run's, made for the
competition (not synthetic, its 10,000 ids), not sent before, and from a run that learned
something; and how many submissions Kaggle's UTC day has left. Each refusal says why and what
to do (commands/submit.py sends)."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from pipeline.classes import CIFAR10_CLASS_NAMES, NUM_CLASSES
from pipeline.errors import PipelineError
from pipeline.integrations.repository import changed_files, stale_stages
from pipeline.paths import LATEST_MANIFEST_PATH, PREDICT_METRICS_PATH
from pipeline.records.manifest import RunSummary, last_run_id, read_manifest

CHANCE_ACCURACY_LIMIT = 0.15  # validation accuracy: chance is 1/NUM_CLASSES = 0.10, plus a margin
RECORDS = ("submissions",)  # history.csv and the manifests: records of runs, not their inputs


def run_of_latest_csv(csv_path: Path, csv_md5: str) -> RunSummary:
    """The manifest of the predict run that wrote `csv_path`; refuse a CSV no run wrote."""
    if not PREDICT_METRICS_PATH.exists():
        raise PipelineError(f"{PREDICT_METRICS_PATH}: missing; run `dvc repro` first")
    run_id = last_run_id()
    if run_id is None:
        raise PipelineError(f"{PREDICT_METRICS_PATH}: no run_id; rerun `dvc repro`")
    try:
        manifest = read_manifest(LATEST_MANIFEST_PATH)
    except PipelineError:  # missing or damaged: not that run's either
        manifest = None
    if manifest is None or manifest.run_id != run_id:
        raise PipelineError(
            f"{LATEST_MANIFEST_PATH}: not the manifest of run {run_id}, the last predict run's; "
            "rerun `dvc repro -f predict`"
        )
    if manifest.csv_md5 != csv_md5:
        raise PipelineError(
            f"{csv_path}: md5 {csv_md5} is not the CSV run {run_id} wrote ({manifest.csv_md5}); "
            "a CSV changed by hand cannot be traced: rerun `dvc repro`"
        )
    return dataclasses.replace(manifest, run_id=run_id)


# The competition's custom test set: ids 0..9999, one row each (both years' pickles)
COMPETITION_IDS = frozenset(range(10_000))


def not_for_the_competition(manifest: RunSummary, csv_path: Path, ids: list[int]) -> str | None:
    """Why `csv_path` can never be a submission, `--force` or not: a synthetic run, or rows whose
    ids are not the competition's (Kaggle would reject it, or score a stand-in set)."""
    if manifest.data_source == "synthetic":
        return (
            f"{csv_path}: run {manifest.run_id} trained on synthetic data (data.source: "
            "synthetic, the demo); put the competition's zip in data/input/, set data.source: "
            "auto and run `dvc repro`"
        )
    found = set(ids)
    if found != COMPETITION_IDS or len(ids) != len(COMPETITION_IDS):
        outside = len(found - COMPETITION_IDS)
        return (
            f"{csv_path}: {len(ids)} rows with {outside} ids outside 0–9999; the competition "
            f"expects {len(COMPETITION_IDS)} rows, ids 0–9999: was data/raw's custom test pickle "
            "the competition's?"
        )
    return None


def refusals(csv_md5: str, commit: str | None, history: list[dict[str, str]]) -> dict[str, str]:
    """What stands against submitting, as {short name: reason}; `--force` overrides these."""
    found = {}
    stale = stale_stages()
    if stale:
        found["stale"] = (
            f"outputs are stale (`dvc status`: {', '.join(stale)} changed); run `dvc repro`"
        )
    if commit is None:
        found["no-commit"] = "not in a git repository with a commit: the score could not map to one"
    else:
        changed = changed_files(excluding=RECORDS)
        if changed:
            shown = ", ".join(changed[:4]) + (
                f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            )
            found["dirty"] = f"the git tree differs from the commit ({shown}); commit the run first"
    earlier = [row for row in history if row["csv_md5"] == csv_md5]
    if earlier:
        first = earlier[0]
        found["duplicate"] = (
            f"this CSV (md5 {csv_md5}) was already submitted on {first['submitted_utc']} "
            f"(Kaggle ref {first['kaggle_ref']}, run {first['run_id']})"
        )
    return found


def learned_nothing(manifest: RunSummary, csv_path: Path, labels: list[int]) -> dict[str, str]:
    """Refusals (`--force` overrides them) for a run whose CSV would score at chance."""
    found = {}
    accuracy = manifest.val_accuracy
    if isinstance(accuracy, (int, float)) and accuracy <= CHANCE_ACCURACY_LIMIT:
        found["chance"] = (
            f"run {manifest.run_id} has validation accuracy {accuracy:.4f}, at chance "
            f"(≤ {CHANCE_ACCURACY_LIMIT} with {NUM_CLASSES} classes): it learned nothing "
            "(a NaN loss, a broken run?)"
        )
    if len(labels) > 1 and len(set(labels)) == 1:
        found["one-class"] = (
            f"every prediction in {csv_path} is class {labels[0]} "
            f"({CIFAR10_CLASS_NAMES[labels[0]]}): it would score at chance"
        )
    return found


# --- Kaggle's daily limit, counted over its UTC day ----------------------------------------


def made_today(submissions: list, now: datetime.datetime) -> int:
    """How many of `submissions` count against today's limit: Kaggle's day is UTC (00:00 to
    00:00), and a submission that failed to score (ERROR) does not count."""
    today = now.astimezone(datetime.timezone.utc).date()
    return sum(
        1
        for item in submissions
        if item.date is not None
        and _as_utc(item.date).date() == today
        and getattr(item.status, "name", "") != "ERROR"
    )


def next_day_utc(now: datetime.datetime) -> datetime.datetime:
    """When Kaggle's day after `now` starts: the next 00:00 UTC."""
    today = now.astimezone(datetime.timezone.utc).date()
    return datetime.datetime.combine(
        today + datetime.timedelta(days=1), datetime.time(), tzinfo=datetime.timezone.utc
    )


def _as_utc(moment: datetime.datetime) -> datetime.datetime:
    """kagglesdk gives naive datetimes in UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)
