"""Atomic file and folder writes: an output appears whole or not at all.

Every stage writes through these helpers, so a crash or an error mid-write never leaves a
half-written file where the next stage (or DVC) would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent
    )
    os.close(descriptor)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        _sync(temp_path)  # the bytes reach the disk before the name points at them
        os.replace(temp_path, final_path)
        _sync(final_path.parent)  # and the rename itself survives a power cut
    finally:
        temp_path.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    """fsync a file or folder; a file system that cannot (some network mounts) is let be."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing or malformed file is a `PipelineError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from None


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temp_path:
        temp_path.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(final_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final_dir` (old contents removed)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(
        tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent)
    )
    try:
        yield temp_dir
        if final_dir.exists():
            old_dir = final_dir.with_name(f".{final_dir.name}.old")
            shutil.rmtree(old_dir, ignore_errors=True)
            os.replace(final_dir, old_dir)
            os.replace(temp_dir, final_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(temp_dir, final_dir)
        _sync(final_dir.parent)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


MD5_CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 of a file's bytes (what DVC and the manifests record), read 1 MiB at a time."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(MD5_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
