"""Run records of predict: `run_id`, the files named after it, and the manifest beside each CSV.

This module alone builds and reads manifests: predict writes submissions/latest.json
(`write_manifest`), a DVC output, so a run's commit (an experiment's too) carries it; submit
records a submitted run's copy as submissions/<run_id>.json; submit, scores and reproduce read
them as a `RunSummary` (`load_manifest` finds either); `run_files` names a run's files.

`run_id` is a short digest of what made the CSV: the fetch → select entries of dvc.lock (their
commands, deps and params hashes: data, code, params), the predict stage's own params and code
files, and the md5 of the two files predict actually reads (models/final.pt and the prepared
custom test set). Same inputs → same run_id; any change upstream → a new one. Upstream outputs
are left out: each one that matters is some stage's dep, and the rest are metrics whose
timings differ on every run. The manifest adds the git commit and whether the tree was dirty, dvc.lock's
sha256, all params, the model (and, for each model in it, the file that defines it, that file's
md5 and whether it is residual), validation accuracy with and without TTA, the CSV's md5, the
predicted counts per class, and the device and torch version. It holds no credentials: it is
built from the fields below only, never from the environment, and URLs in the params lose any
user:password@ and query string (`without_secrets`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config.load import model_from_config
from pipeline.config.yaml_files import parse_yaml, read_params_text
from pipeline.errors import PipelineError
from pipeline.files import file_md5, read_json, write_json_atomic
from pipeline.integrations.repository import changed_files, git, head_commit, stage_code_md5s
from pipeline.models.registry import is_residual, model_source
from pipeline.paths import LATEST_MANIFEST_PATH, PREDICT_METRICS_PATH, SUBMISSION_PATH
from pipeline.records.checkpoint import Checkpoint

UPSTREAM_STAGES = ("fetch", "prepare", "train", "select", "distill")
# Tracked files that a run itself rewrites: a change there is the run's output, not dirt.
RUN_WRITTEN = ("dvc.lock", "metrics", "submissions")
LOCK_INPUT_KEYS = ("cmd", "deps", "params")  # of a dvc.lock stage entry; not its outs
RUN_ID_LENGTH = 12  # hex characters of the sha256


def run_id(
    predict_params: dict, input_files: list[Path], lock_path: Path = Path("dvc.lock"),
    dvc_yaml: Path = Path("dvc.yaml"),
) -> str:  # fmt: skip
    """The digest described above; `input_files` are the files predict reads (hashed by content)."""
    text = read_params_text(lock_path) if lock_path.exists() else ""
    lock = parse_yaml(text, str(lock_path)) or {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
        if text:
            raise PipelineError(
                f"{lock_path}: not a DVC lock file (no mapping of stages); restore it with "
                f"`git checkout {lock_path}` and run `dvc repro`"
            )
        stages = {}
    identity = {
        "upstream": {
            name: {key: stages.get(name, {}).get(key) for key in LOCK_INPUT_KEYS}
            for name in UPSTREAM_STAGES
        },
        "predict_params": predict_params,
        "predict_code": stage_code_md5s("predict", dvc_yaml),
        "inputs": {str(path): file_md5(path) for path in input_files},
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_LENGTH]


def git_state(folder: Path = Path(".")) -> dict:
    """The commit checked out and whether files differ from it, untracked ones too (None outside git)."""
    commit = head_commit(folder)
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changed_files(folder, excluding=RUN_WRITTEN))}


def lock_sha256(lock_path: Path = Path("dvc.lock")) -> str | None:
    return hashlib.sha256(lock_path.read_bytes()).hexdigest() if lock_path.exists() else None


def without_secrets(value: object) -> object:
    """`value` (params as plain data) with any URL's user:password@ and ?query removed.

    A download URL may carry a token (https://user:token@host/…, a presigned ?X-Amz-Signature=…);
    the manifest is meant to be committed, so it keeps only scheme, host and path.
    """
    if isinstance(value, dict):
        return {key: without_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    if isinstance(value, str) and "://" in value:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return value


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": f"{device.type}: {name or platform.machine()}", "torch": torch.__version__}


@dataclass(frozen=True)
class RunFiles:
    """What one predict run leaves under submissions/, named after its run_id."""

    csv: Path  # <run_id>.csv: a copy of latest.csv (git-ignored)
    manifest: Path  # <run_id>.json: a submitted run's manifest (submit writes it)


def run_files(run_id: str, folder: Path = SUBMISSION_PATH.parent) -> RunFiles:
    """The files of run `run_id` in `folder` (submissions/, or a worktree's)."""
    return RunFiles(csv=folder / f"{run_id}.csv", manifest=folder / f"{run_id}.json")


def model_sources(checkpoint: Checkpoint) -> dict[str, dict]:
    """Each model in the checkpoint (an ensemble's members too), by name: the file that defines
    it, that file's md5, and whether the model is residual, as its file declares."""
    sources: dict[str, dict] = {}
    for config in [checkpoint.model_config, *(m.model_config for m in checkpoint.members)]:
        name = config["name"]
        if name not in sources:
            residual = is_residual(model_from_config(config))
            sources[name] = model_source(name) | {"residual": residual}
    return sources


def write_manifest(
    run_id: str, checkpoint: Checkpoint, model_params: int, submission_path: Path,
    report: dict, all_params: dict | None, device: torch.device, git: dict | None = None,
) -> None:  # fmt: skip
    """submissions/latest.json: what made the CSV (see the module's docstring); `report` is
    predict's metrics (accuracy, TTA, counts)."""
    files = run_files(run_id, submission_path.parent)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(
        submission_path.parent / LATEST_MANIFEST_PATH.name,
        {
            "run_id": run_id, "created_utc": created, "git": git or git_state(),
            "dvc_lock_sha256": lock_sha256(), "params": without_secrets(all_params),
            "model": checkpoint.model_name, "model_config": checkpoint.model_config,
            "models": model_sources(checkpoint),
            "model_params": model_params, "checkpoint_epoch": int(checkpoint.epoch),
            "csv": files.csv.name,
            "training": checkpoint.training or {"device": None, "deterministic": None},
            "csv_md5": file_md5(submission_path),
        } | report | environment(device),
    )  # fmt: skip


@dataclass(frozen=True)
class RunSummary:
    """What submit, scores and reproduce read of a manifest (None where an old one lacks it)."""

    run_id: str | None
    csv_md5: str | None
    model: str | None
    model_params: int | None
    val_accuracy: float | None
    tta: str | None
    device: str | None  # "cuda: NVIDIA H200", "cpu: x86_64"
    torch: str | None

    data_source: str | None = None  # params' data.source: "synthetic" is never submitted
    cpu_threads: int | None = None  # training's torch threads (None: an older manifest)

    @classmethod
    def from_json(cls, data: dict) -> RunSummary:
        """The summary of a manifest's fields; one of the wrong type (hand-edited, or a merge)
        is a PipelineError naming it, never a crash where it is printed."""
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        for name, value in fields.items():
            number = name in ("model_params", "val_accuracy")
            expected = (int,) if name == "model_params" else (int, float) if number else (str,)
            if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
                kind = "a number" if number else "text"
                raise PipelineError(f"run manifest: {name} must be {kind}, found {value!r:.60}")
        training = data.get("training")
        threads = training.get("cpu_threads") if isinstance(training, dict) else None
        fields["cpu_threads"] = threads if isinstance(threads, int) else None
        params = data.get("params")
        data_params = params.get("data") if isinstance(params, dict) else None
        source = data_params.get("source") if isinstance(data_params, dict) else None
        return cls(**fields | {"data_source": source if isinstance(source, str) else None})

    @property
    def environment(self) -> str:
        threads = f", {self.cpu_threads} CPU threads" if self.cpu_threads else ""
        return f"{self.device or '?'}, torch {self.torch or '?'}{threads}"


def read_manifest(path: Path) -> RunSummary:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: not a run manifest (expected a JSON object)")
    try:
        return RunSummary.from_json(data)
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None


def _committed_json(commit: str | None, relative: Path) -> object:
    """A JSON file as `commit` holds it (git show), or None."""
    if not commit:
        return None
    try:
        return json.loads(git("show", f"{commit}:{relative.as_posix()}"))
    except (PipelineError, json.JSONDecodeError):
        return None


def _candidates(run_id: str, commit: str | None, folder: Path, fresh: bool) -> Iterator[object]:
    """Where a run's manifest may be, in order, read only as far as needed."""
    kept = (run_files(run_id).manifest, LATEST_MANIFEST_PATH)
    for relative in reversed(kept) if fresh else kept:
        in_tree = folder / relative.name
        try:
            yield read_json(in_tree) if in_tree.exists() else None
        except PipelineError:  # a damaged latest.json (a merge conflict) is some run's, not this
            if relative != LATEST_MANIFEST_PATH:
                raise
        yield _committed_json(commit, relative)


def load_manifest(
    run_id: str,
    commit: str | None = None,
    folder: Path = SUBMISSION_PATH.parent,
    fresh: bool = False,
) -> RunSummary | None:
    """A run's manifest: its submitted copy (<run_id>.json), else latest.json when it is that
    run's (`fresh`: latest.json first, as a rerun just wrote it); each from `folder` in the
    working tree, else from `commit` (git show); else None."""
    for data in _candidates(run_id, commit, folder, fresh):
        if isinstance(data, dict) and data.get("run_id") == run_id:
            return RunSummary.from_json(data)
    return None


def last_run_id(root: Path = Path(".")) -> str | None:
    """The run_id the last predict run under `root` recorded in metrics/predict.json."""
    path = root / PREDICT_METRICS_PATH
    run_id = read_json(path).get("run_id") if path.exists() else None
    return run_id if isinstance(run_id, str) and run_id else None
