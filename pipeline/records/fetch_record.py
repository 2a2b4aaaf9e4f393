"""What fetch may replace in data/raw: only what it wrote itself, never a user's files.

data/raw/fetch_record.json lists every entry fetch wrote (a file's size and md5, a folder, a
link's target) and the source. fetch replaces only a data/raw the record describes whole;
anything else (a file browser's `.DS_Store` aside) is named in a one-line refusal. A data/raw
that links to a user's folder is never replaced at all: filled if empty, else left as it is
when it holds exactly what fetch would write, else refused.
"""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import file_md5, write_json_atomic
from pipeline.folders import FILESYSTEM_ENTRIES
from pipeline.paths import INPUT_DIR

FETCH_RECORD = "fetch_record.json"  # in data/raw: the source and every entry fetch wrote there
DESKTOP_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # a file browser's, not data


def _entry(path: Path) -> dict[str, object]:
    if path.is_symlink():
        return {"link": os.readlink(path)}
    if path.is_dir():
        return {"folder": True}
    if path.is_file():
        return {"size": path.stat().st_size, "md5": file_md5(path)}
    return {"other": True}  # a FIFO or device: never fetch's


def _inventory(folder: Path) -> dict[str, dict[str, object]]:
    """Every entry under `folder` but fetch's record: {relative path: size and md5 of a file;
    a folder; a link's target}. rglob never follows a link into another folder."""
    return {
        path.relative_to(folder).as_posix(): _entry(path)
        for path in sorted(folder.rglob("*"))
        if path.relative_to(folder).as_posix() != FETCH_RECORD
    }


def write_fetch_record(raw_tmp: Path, source: str) -> None:
    write_json_atomic(raw_tmp / FETCH_RECORD, {"source": source, "files": _inventory(raw_tmp)})


def _record(raw_dir: Path) -> dict:
    """fetch's record in `raw_dir`; {} when there is none, or not one of fetch's."""
    try:
        record = json.loads((raw_dir / FETCH_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def fetched_source(raw_dir: Path) -> str | None:
    """The source fetch wrote `raw_dir` from, if its record is there and still describes every
    file in it; None for files a user put there (or changed since)."""
    record = _record(raw_dir)
    if not record or record.get("files") != _inventory(raw_dir):
        return None
    return record.get("source") if isinstance(record.get("source"), str) else None


def user_entries(raw_dir: Path) -> list[str]:
    """What in `raw_dir` fetch did not write, as relative paths: [] for a folder that fetch's
    record describes whole (or an empty one); everything it does not describe otherwise."""
    if raw_dir.is_symlink() or not raw_dir.exists():
        return []
    if not raw_dir.is_dir():
        return ["(a file, not a folder)"]
    if not any(entry.name not in FILESYSTEM_ENTRIES for entry in raw_dir.iterdir()):
        return []
    written = _record(raw_dir).get("files")
    written = written if isinstance(written, dict) else {}
    found = _inventory(raw_dir)
    return [
        name for name, entry in found.items()
        if written.get(name) != entry and name.split("/")[0] not in FILESYSTEM_ENTRIES
        and name.rsplit("/", 1)[-1] not in DESKTOP_LITTER
    ] + sorted(set(written) - set(found))  # fmt: skip


def refuse_to_replace_user_files(raw_dir: Path) -> None:
    entries = user_entries(raw_dir)
    if entries:
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        raise PipelineError(
            f"{raw_dir}: holds what fetch did not write ({', '.join(entries[:3])}{more}), and "
            f"fetch never replaces it: move it out of {raw_dir} (your own copy of the "
            f"competition's files belongs in {raw_dir.parent / INPUT_DIR.name}/)"
        )


def linked_folder_in_use(raw_dir: Path) -> Path | None:
    """The folder a symlinked `raw_dir` points to, when that folder already holds files.

    A linked data/raw is the user's folder, often shared with other projects or people. A
    demanding user expects fetch to keep the link as they made it (never move it aside or put a
    copy in its place, which broke every later fetch) and never to overwrite files others may
    be reading. So a link to an empty folder (a fresh disk's `lost+found` aside) is filled in
    place (atomic_directory swaps its contents inside it, never beside it; None here), a folder
    that already holds exactly what this fetch produces is left alone, and one holding anything
    else is refused (`require_same_files`).
    """
    if not raw_dir.is_symlink():
        return None
    target = raw_dir.resolve()
    if not target.is_dir():
        raise PipelineError(
            f"{raw_dir}: a link to {target}, which is not a folder (an unmounted drive?); fix "
            "the link, or remove it to fetch into a folder of its own"
        )
    in_use = any(entry.name not in FILESYSTEM_ENTRIES for entry in target.iterdir())
    return target if in_use else None


def require_same_files(fetched: Path, linked: Path, raw_dir: Path, source: str) -> None:
    for path in sorted(p for p in fetched.rglob("*") if p.is_file() and p.name != FETCH_RECORD):
        relative = path.relative_to(fetched)
        kept = linked / relative
        if not (kept.is_file() and filecmp.cmp(path, kept, shallow=False)):
            raise PipelineError(
                f"{raw_dir}: a link to {linked}, whose {relative} is not what data.source "
                f"'{source}' gives; fetch never overwrites a linked folder (others may use it): "
                "remove the link, point it at an empty folder, or use data.source: auto"
            )
