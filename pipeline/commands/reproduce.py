"""`python -m pipeline reproduce RUN`: bring a submitted run back from its commit; compare the CSV.

RUN is a run_id or CSV md5 (or a prefix of at least 4 characters) or a Kaggle submission
reference, looked up in submissions/history.csv. The run's commit is checked out in a separate
git worktree (default: ../<project>-runs/<run_id>; the working copy here is not touched), where
`dvc pull` restores the outputs from the DVC remote; when the remote lacks some of them,
`dvc repro --pull` pulls what it has and reruns the stages that are missing. The worktree's
submissions/latest.csv is then compared with the submitted CSV's md5: *identical*, or what
differs (labels, the outputs that came out different from the commit's dvc.lock, device and
torch version) and why it may. The exit status is 0 only for identical.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import file_md5
from pipeline.integrations.repository import (
    NO_REMOTE_HELP,
    default_remote,
    dvc,
    dvc_cache_dir,
    git,
    last_error_line,
    lock_output_hashes,
)
from pipeline.paths import HISTORY_PATH, SUBMISSION_PATH
from pipeline.records.history import find_rows, read_history
from pipeline.records.manifest import last_run_id, load_manifest, run_files
from pipeline.reporting import console

LOCAL_DVC_CONFIG = Path(".dvc/config.local")  # git-ignored: a remote's credentials or local path


def resolve(key: str, history: list[dict[str, str]]) -> dict[str, str]:
    """The history row that RUN names; an error when none or several different runs match."""
    rows = find_rows(history, key)
    if not rows:
        raise PipelineError(
            f"{HISTORY_PATH}: no submission matches '{key}' (a run_id, CSV md5 or Kaggle reference; "
            "reproduce works on submitted runs, whose commit submit recorded)"
        )
    runs = {(row["run_id"], row["commit"], row["csv_md5"]) for row in rows}
    if len(runs) > 1:
        listed = ", ".join(sorted(f"run {run} @ {commit[:7]}" for run, commit, _ in runs))
        raise PipelineError(
            f"{HISTORY_PATH}: '{key}' matches several runs ({listed}); give more of it"
        )
    return rows[0]


def default_folder(run_id: str) -> Path:
    project = Path.cwd().resolve()
    return project.parent / f"{project.name}-runs" / run_id


def share_cache(worktree: Path) -> None:
    """Point the worktree's DVC cache at this clone's, so outputs already here are not fetched
    or recomputed again (a `--no-push` run too)."""
    result = dvc("cache", "dir", capture=True)
    cache = result.stdout.strip() if result.returncode == 0 else ""
    if cache:
        dvc("cache", "dir", "--local", str(Path(cache).resolve()), cwd=worktree)


def restore_outputs(worktree: Path) -> str:
    """Restore the commit's outputs in `worktree`; say how ("pulled", "cache" or "recomputed").

    `dvc pull`; when the remote lacks outputs, `dvc repro --pull`. Any other pull failure (no
    access to the remote, a bad config) stops here: recomputing could mean hours of training
    that a fixed remote would have spared. With no remote at all, this clone's cache is the
    only source (`dvc checkout`).
    """
    if default_remote(worktree, project_only=False) is None:
        console.print(
            "reproduce: the commit names no DVC remote; restoring from this clone's cache"
        )
        if dvc("checkout", cwd=worktree, capture=False).returncode == 0:
            return "cache"
        raise PipelineError(
            f"reproduce: the run's commit names no DVC remote and this clone's DVC cache lacks its "
            f"outputs; {NO_REMOTE_HELP} (or set one for this clone with `dvc remote add --local -d "
            f"...`), then `git worktree remove --force {worktree}` and rerun"
        )
    console.print(f"reproduce: dvc pull in {worktree}")
    pulled = dvc("pull", cwd=worktree, capture=False)
    if pulled.returncode == 0:
        return "pulled"
    cloud = dvc("status", "--cloud", "--json", cwd=worktree)
    if cloud.returncode != 0:
        raise PipelineError(
            f"reproduce: dvc pull failed and the DVC remote could not be checked "
            f"({last_error_line(cloud)}); fix access to it and rerun (nothing was recomputed; "
            f"`git worktree remove --force {worktree}` first)"
        )
    # "missing": in neither this cache nor the remote ("deleted" and "new" mean one of them has it);
    # a folder's listing object has no name
    missing = [
        path for path, state in json.loads(cloud.stdout or "{}").items() if state == "missing"
    ]
    if not missing:
        raise PipelineError(
            f"reproduce: dvc pull failed ({last_error_line(pulled)}) although the remote has every "
            f"output; see dvc's message above (`git worktree remove --force {worktree}` before "
            "rerunning)"
        )
    named = sorted(path for path in missing if path not in (None, "null"))
    shown = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
    console.print(
        f"reproduce: the remote lacks {shown or 'some outputs'}; running `dvc repro --pull`: what the remote has is "
        "pulled, the stages whose outputs are missing are recomputed"
    )
    rerun = dvc("repro", "--pull", cwd=worktree, capture=False)
    if rerun.returncode != 0:
        raise PipelineError(
            f"reproduce: dvc repro in {worktree} failed ({last_error_line(rerun)}); the worktree is "
            "left there to inspect"
        )
    return "recomputed"


def _labels(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["ID"]: row["Labels"] for row in csv.DictReader(handle)}


def committed_outputs(commit: str) -> dict[str, str]:
    """Every output path `commit`'s dvc.lock records, with its md5."""
    return lock_output_hashes(git("show", f"{commit}:dvc.lock"))


def changed_outputs(committed: dict[str, str], worktree: Path) -> list[str]:
    """Outputs whose md5 in the worktree's dvc.lock differs from the `committed` one."""
    reproduced = lock_output_hashes((worktree / "dvc.lock").read_text(encoding="utf-8"))
    return [path for path, md5 in committed.items() if reproduced.get(path) != md5]


def differences(
    row: dict[str, str], worktree: Path, reproduced_md5: str, recomputed: bool
) -> list[str]:
    """What differs between the submitted run and the reproduced one, and why it may.

    Device, torch and kernel reasons only apply to recomputed outputs: pulled ones are the
    bytes the commit recorded.
    """
    lines = [f"CSV md5: submitted {row['csv_md5']}, reproduced {reproduced_md5}"]
    committed = committed_outputs(row["commit"])
    recorded = committed.get(SUBMISSION_PATH.as_posix())
    if not recomputed and recorded and reproduced_md5 != recorded:  # restored, yet not those bytes
        cache = dvc_cache_dir() or Path(".dvc/cache")
        lines.append(
            f"the restored {SUBMISSION_PATH} is not the one the commit's dvc.lock records (md5 "
            f"{recorded}): DVC's cache or remote holds a damaged copy; delete "
            f"{cache / 'files/md5' / recorded[:2] / recorded[2:]} and reproduce again"
        )
    if committed.get(SUBMISSION_PATH.as_posix()) != row["csv_md5"]:
        lines.append(
            f"the commit's dvc.lock records {SUBMISSION_PATH} md5 "
            f"{committed.get(SUBMISSION_PATH.as_posix())}, not the submitted CSV's: "
            + (
                f"the submission was forced past '{row['forced']}', so its commit does not describe it"
                if row["forced"]
                else "history.csv says nothing was forced, so the row may have been edited"
            )
        )
    changed = changed_outputs(committed, worktree)
    if changed:
        lines.append(
            "outputs that came out different from the commit's dvc.lock: " + ", ".join(changed)
        )
    submitted_copy = run_files(row["run_id"]).csv  # kept where predict ran
    if submitted_copy.exists() and file_md5(submitted_copy) == row["csv_md5"]:
        before, after = _labels(submitted_copy), _labels(worktree / SUBMISSION_PATH)
        differing = sorted((key for key in before if before[key] != after.get(key)), key=int)
        lines.append(
            f"{len(differing)} of {len(before)} labels differ"
            + (
                f" (ids {', '.join(differing[:8])}{', …' if len(differing) > 8 else ''})"
                if differing
                else ""
            )
        )
    else:
        lines.append(
            f"the submitted CSV itself ({submitted_copy}) is not on this machine to compare labels"
        )
    return lines + (environment_reasons(row, worktree) if recomputed else [])


def environment_reasons(row: dict[str, str], worktree: Path) -> list[str]:
    """For a recomputed run: the device and torch of both runs, and why their bits may differ."""
    lines = []
    original = load_manifest(row["run_id"], row["commit"])
    rerun_id = last_run_id(worktree)
    rerun = (
        load_manifest(rerun_id, folder=worktree / SUBMISSION_PATH.parent, fresh=True)
        if rerun_id
        else None
    )
    was = original.environment if original else None
    now = rerun.environment if rerun else None
    if was and now:
        lines.append(f"submitted run: {was}; this run: {now}")
    if original and rerun and original.torch != rerun.torch:
        lines.append("why: another torch version has other kernels, which round differently")
    threads = (original.cpu_threads, rerun.cpu_threads) if original and rerun else (None, None)
    if None not in threads and threads[0] != threads[1]:
        lines.append(
            f"why: training used {threads[0]} CPU threads then and {threads[1]} now: float sums "
            f"split over other threads round differently (OMP_NUM_THREADS={threads[0]} matches)"
        )
    if original and str(original.device or "").startswith("cuda"):
        lines.append(
            "why: GPU training is not bit-reproducible by default (cuDNN's convolution backward and "
            "atomic adds sum in varying order), so weights and some labels drift between runs"
        )
    elif was and was == now:
        lines.append(
            "why: on the same device type and torch version a CPU run should be identical; check "
            "that fetch got the same data and whether the CPUs differ (AVX2 and AVX-512 kernels "
            "round differently)"
        )
    return lines


def _is_worktree(folder: Path) -> bool:
    """Whether `folder` is one of this repository's git worktrees (one reproduce made)."""
    listed = git("worktree", "list", "--porcelain").splitlines()
    return any(
        Path(line.removeprefix("worktree ")).resolve() == folder
        for line in listed if line.startswith("worktree ")
    )  # fmt: skip


def run(key: str, into: Path | None = None) -> bool:
    """Reproduce the run RUN names as described above; True when the CSV is identical."""
    row = resolve(key, read_history(HISTORY_PATH))
    commit, run_id = row["commit"], row["run_id"]
    if not commit:
        raise PipelineError(f"{HISTORY_PATH}: run {run_id} was submitted outside a git commit")
    try:
        git("cat-file", "-e", f"{commit}^{{commit}}")
    except PipelineError:
        raise PipelineError(
            f"commit {commit[:7]} of run {run_id} is not in this clone; `git fetch` it first"
        ) from None
    worktree = (into or default_folder(run_id)).resolve()
    project = Path.cwd().resolve()
    if worktree == project or project in worktree.parents:  # `--into submissions`: yours
        raise PipelineError(
            f"{worktree}: inside this project; pass --into a new folder outside it (the default "
            f"is {default_folder(run_id)})"
        )
    if worktree.exists() and _is_worktree(worktree):
        raise PipelineError(
            f"{worktree}: already exists; remove it (`git worktree remove --force {worktree}`) or "
            "pass --into another folder"
        )
    if worktree.exists():
        raise PipelineError(
            f"{worktree}: already exists and is not a worktree of this repository (nothing was "
            "changed); pass --into a new folder"
        )
    worktree.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", str(worktree), commit)
    if LOCAL_DVC_CONFIG.exists():
        shutil.copy2(LOCAL_DVC_CONFIG, worktree / LOCAL_DVC_CONFIG)
    share_cache(worktree)
    restored = restore_outputs(worktree)
    how = {
        "pulled": "restored with dvc pull (from the DVC remote, or this clone's cache)",
        "cache": "restored from this clone's DVC cache (dvc checkout; no remote)",
        "recomputed": "recomputed with dvc repro (the remote lacked some outputs)",
    }[restored]
    reproduced = worktree / SUBMISSION_PATH
    if not reproduced.exists():
        raise PipelineError(
            f"{reproduced}: not restored; the commit's dvc.lock has no predict output"
        )
    reproduced_md5 = file_md5(reproduced)
    where = f"run {run_id} @ {commit[:7]} (Kaggle ref {row['kaggle_ref']}), {how}, in {worktree}"
    if reproduced_md5 == row["csv_md5"]:
        console.print(f"reproduce: identical: {SUBMISSION_PATH} md5 {reproduced_md5}; {where}")
        changed = changed_outputs(committed_outputs(commit), worktree)
        if changed:  # recomputed: e.g. metrics holding timings, or weights
            console.print(
                f"  (outputs that differ from the commit's dvc.lock: {', '.join(changed)})"
            )
            for line in environment_reasons(row, worktree):
                console.print(f"  - {line}")
        return True
    console.print(f"reproduce: DIFFERENT: {where}")
    for line in differences(row, worktree, reproduced_md5, restored == "recomputed"):
        console.print(f"  - {line}")
    return False
