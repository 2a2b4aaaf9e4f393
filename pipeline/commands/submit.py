"""`python -m pipeline submit`: send submissions/latest.csv to Kaggle so its score stays traceable.

In order, and nothing is sent or recorded unless every step passes:
1. the CSV passes validation against the prepared custom test ids, and is the CSV that the last
   predict run wrote (submissions/latest.json's md5), which gives the run_id; a run on synthetic data, or
   a CSV whose rows are not the competition's 10,000 ids (0–9999), is refused, `--force` or not;
2. an earlier submit that was interrupted after sending (submissions/pending_submission.json
   says so) is looked for in Kaggle's list: found, it gets its history row, and a rerun for the
   same CSV stops there instead of submitting it twice;
3. refusals that `--force` overrides (and that history.csv then records): a run that learned
   nothing (validation accuracy at chance, or every prediction one class), outputs stale
   (`dvc status` not clean), files differing from the commit (changed tracked files, dvc.lock
   included, and untracked ones git does not ignore; submissions/ is the record, not an input),
   no commit at all, the same CSV md5 already submitted;
4. Kaggle accepts the credentials (the account's submissions are listed: the first network
   call), and the account has not reached the daily limit (`--daily-limit`, counted from that
   list over Kaggle's UTC day);
5. `dvc push` puts the run's outputs in the default remote of .dvc/config (`--no-push` skips
   it), so the scored run can be pulled back;
6. the run's manifest is kept as submissions/<run_id>.json and the attempt is recorded
   (pending_submission.json), then the kaggle client submits the CSV
   (uploaded as <run_id>.csv) with a description that starts with the run_id and short commit;
   transient failures are retried without submitting twice;
7. a row goes to submissions/history.csv and the pending record is removed;
8. with `--wait`, Kaggle is polled until it has scored the submission, and the public score is
   printed beside the run_id.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.commands.submit_checks import (
    learned_nothing,
    made_today,
    next_day_utc,
    not_for_the_competition,
    refusals,
    run_of_latest_csv,
)
from pipeline.data.prepared import load_split
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, folder_lock, read_json, write_json_atomic
from pipeline.integrations import kaggle_client, kaggle_marks
from pipeline.integrations.repository import (
    NO_REMOTE_HELP,
    default_remote,
    dvc,
    dvc_cache_dir,
    head_commit,
    last_error_line,
)
from pipeline.paths import (
    HISTORY_PATH,
    LATEST_MANIFEST_PATH,
    PENDING_PATH,
    PREPARED_DIR,
    SUBMISSION_PATH,
)
from pipeline.records.history import FIELDS, append_history, check_row, read_history
from pipeline.records.manifest import run_files
from pipeline.records.submission_csv import (
    check_submission_text,
    decode_submission,
    read_submission,
)
from pipeline.reporting import console

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

SHORT_COMMIT = 7
# a submission sent whose answer has not arrived yet (exists only while sending, or after a kill)
# Kaggle's limit is a competition rule its list does not carry; 10 unless the rules say otherwise
DAILY_LIMIT = 10  # submissions per UTC day; --daily-limit changes it
WAIT_LIMIT_SECONDS = 600.0  # `--wait`: the longest wait for Kaggle's score; --wait-limit
POLL_INTERVAL_SECONDS = 10.0  # `--wait`: between two looks at the submission; --poll-interval
MIN_POLL_INTERVAL_SECONDS = 5.0  # the kaggle CLI's own floor: faster polling only loads Kaggle
MAX_MESSAGE_CHARACTERS = 500  # a -m message: Kaggle may cut a long description


@dataclasses.dataclass(frozen=True)
class PendingSubmission:
    """An attempt to submit whose answer has not arrived: the history row it gets once Kaggle's
    list shows it (all but kaggle_ref) and the refs Kaggle listed before it was sent."""

    row: dict[str, str]
    refs_before: list[int]

    def confirmed(self, ref: int) -> dict[str, str]:
        return self.row | {"kaggle_ref": str(ref)}


def write_pending(pending: PendingSubmission, path: Path = PENDING_PATH) -> None:
    write_json_atomic(path, dataclasses.asdict(pending))


def read_pending(path: Path = PENDING_PATH) -> PendingSubmission | None:
    if not path.exists():
        return None
    data = read_json(path)
    damaged = PipelineError(
        f"{path}: not a pending submission record; check `python -m pipeline scores` for "
        "the submission it stood for, then delete it"
    )
    if not (isinstance(data, dict) and isinstance(data.get("row"), dict)):
        raise damaged
    row, refs = data["row"], data.get("refs_before", [])
    if set(row) != set(FIELDS) - {"kaggle_ref"} or not all(
        isinstance(value, str) for value in row.values()
    ):
        raise damaged
    if not isinstance(refs, list) or not all(
        isinstance(ref, int) and not isinstance(ref, bool) for ref in refs
    ):
        raise damaged
    check_row(path, 1, row | {"kaggle_ref": ""})  # what it would add to history.csv: its checks
    return PendingSubmission(row=row, refs_before=refs)


def settle_pending(
    api: KaggleApi, pending: PendingSubmission, history_path: Path, pending_path: Path
) -> dict[str, str] | None:
    """Look in Kaggle's list for an attempt that got no answer (killed, timed out); found: give
    it its history row (returned). Either way the record goes: what Kaggle does not list never
    arrived."""
    row = pending.row
    earlier = (
        f"the earlier submit of run {row['run_id']} ({row['submitted_utc']}) that got no answer"
    )
    submissions = kaggle_client.list_submissions(api, row["competition"])
    ref = kaggle_marks.find_submission(submissions, row["run_id"], set(pending.refs_before))
    if ref is None:
        console.print(f"submit: {earlier} never arrived (Kaggle's list does not show it)")
        pending_path.unlink()
        return None
    confirmed = pending.confirmed(ref)
    if not any(known["kaggle_ref"] == str(ref) for known in read_history(history_path)):
        append_history(confirmed, history_path)
    pending_path.unlink()
    console.print(f"submit: {earlier} did reach Kaggle (ref {ref}); recorded in {history_path}")
    return confirmed


def refuse_over_daily_limit(submissions: list, competition: str, daily_limit: int) -> None:
    """Stop before uploading when today's submissions (Kaggle's day: UTC) reached the limit."""
    now = datetime.datetime.now(datetime.timezone.utc)
    made = made_today(submissions, now)
    if made < daily_limit:
        return
    reset = next_day_utc(now)
    hours, seconds = divmod(int((reset - now).total_seconds()), 3600)
    raise PipelineError(
        f"submit refused: {made} submissions to '{competition}' today, the daily limit of "
        f"{daily_limit} (Kaggle's day is UTC); it resets at {reset:%Y-%m-%d %H:%M} UTC, in "
        f"{hours} h {seconds // 60:02d} min (--daily-limit N if the competition allows more)"
    )


def wait_for_score(
    api: KaggleApi, ref: int, run_id: str, wait_limit: float, poll_interval: float
) -> str:
    """Poll Kaggle until it has scored `ref` (at most `wait_limit` seconds); the public score."""
    started = time.monotonic()
    shown = f"Kaggle is scoring ref {ref} (run {run_id})"
    with console.status(shown) as display:
        while True:
            submission = kaggle_client.get_submission(api, ref)
            state = getattr(submission.status, "name", str(submission.status)).lower()
            if state == "complete":
                return kaggle_marks.score_text(submission, "public") or "(not published)"
            if state == "error":
                reason = kaggle_client.redact(submission.error_description or "no reason given")
                raise PipelineError(
                    f"submit: Kaggle could not score ref {ref} (run {run_id}): {reason}"
                )
            waited = time.monotonic() - started
            if waited >= wait_limit:
                raise PipelineError(
                    f"submit: ref {ref} (run {run_id}) is still {state} after {wait_limit:g} s "
                    "(--wait-limit); it is recorded: `python -m pipeline scores` shows its "
                    "score once Kaggle has computed it"
                )
            display.update(f"{shown}: {state}, {waited:.0f} s of at most {wait_limit:g} s")
            time.sleep(min(poll_interval, wait_limit - waited))


def one_line_message(message: str | None) -> str | None:
    """`-m`'s text on one line (newlines and runs of spaces as one space), refused when long:
    Kaggle may cut a long description, and history.csv keeps it whole."""
    if message is None or not message.strip():
        return None
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE_CHARACTERS:
        raise PipelineError(
            f"submit: the -m message is {len(text):,} characters long; say it in at most "
            f"{MAX_MESSAGE_CHARACTERS} (nothing was sent)"
        )
    return text


def check_options(poll_interval: float, wait_limit: float, daily_limit: int) -> None:
    if not (math.isfinite(poll_interval) and math.isfinite(wait_limit)):
        raise PipelineError("submit: --poll-interval and --wait-limit must be finite seconds")
    if poll_interval < MIN_POLL_INTERVAL_SECONDS:
        raise PipelineError(
            f"submit: --poll-interval {poll_interval:g} is under {MIN_POLL_INTERVAL_SECONDS:g} s; "
            "polling faster only loads Kaggle's servers"
        )
    if wait_limit <= 0 or daily_limit < 1:
        raise PipelineError("submit: --wait-limit and --daily-limit must be positive")


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
    wait: bool = False, wait_limit: float | None = None, poll_interval: float | None = None,
    daily_limit: int | None = None, pending_path: Path = PENDING_PATH,
) -> dict[str, str]:  # fmt: skip
    """Submit `csv_path` as described above; return the history row written.

    One submit at a time: two at once sent the same CSV twice (two of the day's submissions),
    and one died on the other's pending record. Options left None take the constants above."""
    pending_path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(pending_path.parent, holder="another submit"):
        return _submit(
            competition, message, force, push, csv_path, history_path, wait, wait_limit,
            poll_interval, daily_limit, pending_path,
        )  # fmt: skip


def _submit(
    competition: str, message: str | None, force: bool, push: bool, csv_path: Path,
    history_path: Path, wait: bool, wait_limit: float | None, poll_interval: float | None,
    daily_limit: int | None, pending_path: Path,
) -> dict[str, str]:  # fmt: skip
    wait_limit = WAIT_LIMIT_SECONDS if wait_limit is None else wait_limit
    poll_interval = POLL_INTERVAL_SECONDS if poll_interval is None else poll_interval
    daily_limit = DAILY_LIMIT if daily_limit is None else daily_limit
    check_options(poll_interval, wait_limit, daily_limit)
    message = one_line_message(message)
    # read once: the bytes validated and hashed are the bytes uploaded
    csv_bytes = read_submission(csv_path, dvc_cache_dir() if csv_path.is_symlink() else None)
    custom_test_ids = load_split(PREPARED_DIR, "custom_test")["ids"]
    labels = check_submission_text(
        csv_path, decode_submission(csv_path, csv_bytes), custom_test_ids
    )
    csv_md5 = hashlib.md5(csv_bytes).hexdigest()
    manifest = run_of_latest_csv(csv_path, csv_md5)
    problem = not_for_the_competition(manifest, csv_path, [int(i) for i in custom_test_ids])
    if problem is not None:
        raise PipelineError(f"submit refused: {problem}")
    run_id = manifest.run_id
    api = None
    pending = read_pending(pending_path)
    if pending is not None:
        api = kaggle_client.connect("submit")
        settled = settle_pending(api, pending, history_path, pending_path)
        if settled and (settled["csv_md5"], settled["competition"]) == (csv_md5, competition):
            console.print(
                f"submit: {csv_path} is that submission: not sending it again; keep the record: "
                f"git add {history_path} {run_files(run_id).manifest}"
            )
            if wait:
                report_score(api, int(settled["kaggle_ref"]), run_id, wait_limit, poll_interval)
            return settled
    commit = head_commit()
    history = read_history(history_path)
    found = learned_nothing(manifest, csv_path, labels) | refusals(csv_md5, commit, history)
    if found and not force:
        raise PipelineError(
            "submit refused: " + "; ".join(found.values()) + " (--force submits anyway)"
        )
    for reason in found.values():
        console.print(f"submit: --force: submitting although {reason}")
    api = api or kaggle_client.connect("submit")
    # the first call to Kaggle: rejected credentials stop here, before a long push
    submissions = kaggle_client.list_submissions(api, competition)
    refuse_over_daily_limit(submissions, competition, daily_limit)
    if push:
        push_outputs()
    short_commit = commit[:SHORT_COMMIT] if commit else "no-commit"
    accuracy = manifest.val_accuracy
    accuracy_text = f"{accuracy:.4f}" if isinstance(accuracy, float) else "?"
    summary = (
        f"{manifest.model or '?'} {manifest.model_params or '?'} params, "
        f"val {accuracy_text} TTA {manifest.tta or '?'}"
    )
    full_message = kaggle_marks.submission_description(run_id, short_commit, message or summary)
    # the submitted run's manifest, kept before sending: a pending attempt that turns out to
    # have arrived (settle_pending) then has its record even if predict ran again since
    with atomic_path(run_files(run_id).manifest) as temp_path:
        shutil.copyfile(LATEST_MANIFEST_PATH, temp_path)
    row = send(
        api, PendingSubmission(
            row={
                "submitted_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "run_id": run_id, "commit": commit or "", "csv_md5": csv_md5,
                "competition": competition, "message": full_message, "forced": ";".join(found),
            },
            refs_before=sorted(item.ref for item in submissions),
        ), csv_path, csv_bytes, history_path, pending_path,
    )  # fmt: skip
    console.print(
        f"submit: {csv_path} → '{competition}' as Kaggle ref {row['kaggle_ref']} "
        f"(run {run_id} @ {short_commit}); recorded in {history_path}. Keep the record: "
        f"git add {history_path} {run_files(run_id).manifest} && "
        f"git commit -m 'submit run {run_id}'."
        + ("" if wait else " `python -m pipeline scores` shows the score once Kaggle has it.")
    )
    if wait:
        report_score(api, int(row["kaggle_ref"]), run_id, wait_limit, poll_interval)
    return row


def send(
    api: KaggleApi, pending: PendingSubmission, csv_path: Path, csv_bytes: bytes,
    history_path: Path, pending_path: Path,
) -> dict[str, str]:  # fmt: skip
    """Record the attempt, submit, then turn the record into a history row (returned)."""
    row = pending.row
    write_pending(pending, pending_path)  # before sending: a kill from here on is found later
    try:
        ref = kaggle_client.submit_file(
            api, row["competition"], csv_path, csv_bytes, row["run_id"], row["message"],
            set(pending.refs_before),
        )  # fmt: skip
    except KeyboardInterrupt:
        console.print(
            "submit: interrupted while sending; the next `submit` looks for this submission in "
            "Kaggle's list before sending anything"
        )
        raise
    confirmed = pending.confirmed(ref)
    append_history(confirmed, history_path)
    pending_path.unlink()
    return confirmed


def report_score(
    api: KaggleApi, ref: int, run_id: str, wait_limit: float, poll_interval: float
) -> None:
    score = wait_for_score(api, ref, run_id, wait_limit, poll_interval)
    console.print(f"submit: run {run_id}: public score {score} (Kaggle ref {ref})")
