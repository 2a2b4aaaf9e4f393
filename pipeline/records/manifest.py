"""Run identity for submissions: `run_id` and the manifest predict writes beside each CSV.

`run_id` is a short digest of what made the CSV: the fetch → select entries of dvc.lock (their
commands, deps and params hashes: data, code, params), the predict stage's own params and code
files, and the md5 of the two files predict actually reads (models/best.pt and the prepared
custom test set). Same inputs → same run_id; any change upstream → a new one. Upstream outputs
are left out: each one that matters is some stage's dep, and the rest are metrics whose
timings differ on every run. The manifest
(submissions/<run_id>.json) adds the git commit and whether the tree was dirty, dvc.lock's
sha256, all params, the model, validation accuracy with and without TTA, the CSV's md5, the
predicted counts per class, and the device and torch version. It holds no credentials: it is
built from the fields below only, never from the environment, and URLs in the params lose any
user:password@ and query string (`without_secrets`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import urllib.parse
from pathlib import Path

import torch
import yaml

from pipeline.files import file_md5
from pipeline.integrations.repository import changed_files, head_commit, stage_code_md5s

UPSTREAM_STAGES = ("fetch", "prepare", "train", "select")
# Tracked files that a run itself rewrites: a change there is the run's output, not dirt.
RUN_WRITTEN = ("dvc.lock", "metrics", "submissions")
LOCK_INPUT_KEYS = ("cmd", "deps", "params")  # of a dvc.lock stage entry; not its outs
RUN_ID_LENGTH = 12  # hex characters of the sha256


def run_id(
    predict_params: dict, input_files: list[Path], lock_path: Path = Path("dvc.lock"),
    dvc_yaml: Path = Path("dvc.yaml"),
) -> str:  # fmt: skip
    """The digest described above; `input_files` are the files predict reads (hashed by content)."""
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {}
    stages = (lock or {}).get("stages", {})
    identity = {
        "upstream": {
            name: {key: (stages.get(name) or {}).get(key) for key in LOCK_INPUT_KEYS}
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
