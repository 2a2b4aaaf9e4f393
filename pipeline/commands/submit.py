"""`python -m pipeline submit`: send submissions/latest.csv to Kaggle so its score stays traceable.

In order, and nothing is sent or recorded unless every step passes:
1. the CSV passes validation against the prepared custom test ids, and is the CSV that the last
   predict run wrote (its manifest's md5), which gives the run_id;
2. refusals that `--force` overrides (and that history.csv then records): outputs stale
   (`dvc status` not clean), files differing from the commit (changed tracked files, dvc.lock
   included, and untracked ones git does not ignore; submissions/ is the record, not an input),
   no commit at all, the same CSV md5 already submitted;
3. Kaggle accepts the credentials (the account's submissions are listed: the first network call);
4. `dvc push` puts the run's outputs in the default remote of .dvc/config (`--no-push` skips
   it), so the scored run can be pulled back;
5. the kaggle client submits the CSV (uploaded as <run_id>.csv) with a message that always ends
   with the run_id and short commit; transient failures are retried without submitting twice;
6. a row goes to submissions/history.csv.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from pipeline.data.prepared import load_split
from pipeline.errors import PipelineError
from pipeline.files import file_md5
from pipeline.integrations import kaggle_client
from pipeline.integrations.repository import (
    NO_REMOTE_HELP,
    changed_files,
    default_remote,
    dvc,
    head_commit,
    last_error_line,
    stale_stages,
)
from pipeline.paths import HISTORY_PATH, PREDICT_METRICS_PATH, PREPARED_DIR, SUBMISSION_PATH
from pipeline.records.history import append_history, read_history
from pipeline.records.manifest import RunSummary, last_run_id, read_manifest, run_files
from pipeline.records.submission_csv import validate_submission
from pipeline.reporting import console

RECORDS = ("submissions",)  # history.csv and the manifests: records of runs, not their inputs
SHORT_COMMIT = 7


def run_of_latest_csv(csv_path: Path, csv_md5: str) -> RunSummary:
    """The manifest of the predict run that wrote `csv_path`; refuse a CSV no run wrote."""
    if not PREDICT_METRICS_PATH.exists():
        raise PipelineError(f"{PREDICT_METRICS_PATH}: missing; run `dvc repro` first")
    run_id = last_run_id()
    if run_id is None:
        raise PipelineError(f"{PREDICT_METRICS_PATH}: no run_id; rerun `dvc repro`")
    path = run_files(run_id).manifest
    if not path.exists():
        raise PipelineError(
            f"{path}: the manifest of the last predict run is missing; rerun `dvc repro`"
        )
    manifest = read_manifest(path)
    if manifest.csv_md5 != csv_md5:
        raise PipelineError(
            f"{csv_path}: md5 {csv_md5} is not the CSV run {run_id} wrote ({manifest.csv_md5}); "
            "a CSV changed by hand cannot be traced: rerun `dvc repro`"
        )
    return dataclasses.replace(manifest, run_id=run_id)


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


def push_outputs() -> None:
    remote = default_remote()
    if remote is None:
        raise PipelineError(
            "submit: no default DVC remote in .dvc/config, so this run could not be pulled back "
            f"later; {NO_REMOTE_HELP}; or pass --no-push to submit without keeping the outputs"
        )
    console.print(f"submit: dvc push → remote '{remote}'")
    result = dvc("push", capture=False)
    if result.returncode != 0:
        raise PipelineError(
            f"submit: dvc push failed ({last_error_line(result)}); nothing was submitted"
        )


def run(
    competition: str, message: str | None = None, force: bool = False, push: bool = True,
    csv_path: Path = SUBMISSION_PATH, history_path: Path = HISTORY_PATH,
) -> dict[str, str]:  # fmt: skip
    """Submit `csv_path` as described above; return the history row written."""
    if not csv_path.exists():
        raise PipelineError(f"{csv_path}: missing; run `dvc repro` first")
    validate_submission(csv_path, load_split(PREPARED_DIR, "custom_test")["ids"])
    csv_md5 = file_md5(csv_path)
    manifest = run_of_latest_csv(csv_path, csv_md5)
    run_id = manifest.run_id
    commit = head_commit()
    history = read_history(history_path)
    found = refusals(csv_md5, commit, history)
    if found and not force:
        raise PipelineError(
            "submit refused: " + "; ".join(found.values()) + " (--force submits anyway)"
        )
    for reason in found.values():
        console.print(f"submit: --force: submitting although {reason}")
    api = kaggle_client.connect("submit")
    # the first call to Kaggle: rejected credentials stop here, before a long push
    refs_before = kaggle_client.submission_refs(api, competition)
    if push:
        push_outputs()
    short_commit = commit[:SHORT_COMMIT] if commit else "no-commit"
    accuracy = manifest.val_accuracy
    accuracy_text = f"{accuracy:.4f}" if isinstance(accuracy, float) else "?"
    summary = (
        f"{manifest.model or '?'} {manifest.model_params or '?'} params, "
        f"val {accuracy_text} TTA {manifest.tta or '?'}"
    )
    full_message = f"{message.strip() if message else summary} | run {run_id} @ {short_commit}"
    ref = kaggle_client.submit_file(
        api, competition, csv_path, f"{run_id}.csv", full_message, refs_before
    )
    row = {
        "submitted_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id, "commit": commit or "", "csv_md5": csv_md5, "competition": competition,
        "message": full_message, "kaggle_ref": str(ref), "forced": ";".join(found),
    }  # fmt: skip
    append_history(row, history_path)
    console.print(
        f"submit: {csv_path} → '{competition}' as Kaggle ref {ref} (run {run_id} @ {short_commit}); "
        f"recorded in {history_path}. Keep the record: git add {history_path} "
        f"{run_files(run_id).manifest} && git commit -m 'submit run {run_id}'. "
        "`python -m pipeline scores` shows the score once Kaggle has computed it."
    )
    return row
