"""Atomic file and folder writes: an output appears whole or not at all.

Every stage writes through these helpers, so a crash or an error mid-write never leaves a
half-written file where the next stage (or DVC) would take it for a finished one. New outputs get
the mode a plain `open()` or `mkdir()` gives (0666 / 0777 less the umask), a rewritten file keeps
its mode, and a full, read-only, forbidden or busy disk is one line naming the output
(`disk_errors_reported`).

Every temporary or set-aside name holds `pipeline` (`.raw.pipeline-1a2b3c4d.tmp`,
`.raw.pipeline.old`), and clean-up removes only those exact names: a user's own `.raw.old` or
`.raw.backup.tmp` is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are then not kept apart
    fcntl = None

TEMP_NAME_ATTEMPTS = 100  # random 8-hex-digit names: a clash is already one in four billion
OWN_MARK = "pipeline"  # in every name this module makes, so clean-up never takes a user's file


def temp_pattern(stem: str) -> str:
    """The glob matching `new_temp(folder, stem, ...)`'s names, and nothing a user would name."""
    return f".{stem}{OWN_MARK}-*.tmp"


def new_temp(folder: Path, stem: str, create: Callable[[Path], None]) -> Path:
    """Create `folder/.STEMpipeline-<random>.tmp` with `create`, which must refuse an existing name."""
    for _ in range(TEMP_NAME_ATTEMPTS):
        temp = folder / f".{stem}{OWN_MARK}-{secrets.token_hex(4)}.tmp"
        try:
            create(temp)
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(folder))


def _create_file(path: Path) -> None:
    # 0o666 less the umask, as open() gives; tempfile.mkstemp would make it 0600 whatever the umask
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def create_folder(path: Path) -> None:
    path.mkdir(mode=0o777)  # less the umask, as mkdir gives; tempfile.mkdtemp would make it 0700


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only if the block succeeds.

    A file that already exists keeps its mode (a `chmod 600 params.yaml` stays 600). A symlink
    at `final_path` is replaced by the new file and what it pointed to is left as it was: DVC's
    symlink and hardlink cache types make outputs links into the cache, and writing through one
    would change a cached file under its md5's name.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = new_temp(final_path.parent, f"{final_path.name}.", _create_file)
    try:
        yield temp_path
        if final_path.exists() and not final_path.is_symlink():  # a new file: the umask's mode
            os.chmod(temp_path, stat.S_IMODE(os.stat(final_path).st_mode))
        sync_to_disk(temp_path)  # the bytes reach the disk before the name points at them
        os.replace(temp_path, final_path)
        sync_to_disk(final_path.parent)  # and the rename itself survives a power cut
    finally:
        temp_path.unlink(missing_ok=True)


def sync_to_disk(path: Path) -> None:
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
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from None


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temp_path:
        temp_path.write_text(text, encoding="utf-8")


def rewrite_user_file(path: Path, text: str) -> None:
    """Rewrite a file of the user's (params.yaml) atomically; a symbolic link stays one, and
    its target gets the text, keeping its mode (never used for an output: DVC may link those
    into its cache)."""
    write_text_atomic(Path(os.path.realpath(path)), text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


_DISK_HINTS = {
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "the disk is mounted read-only",
    errno.EACCES: "check the folder's owner and permissions",
    errno.EPERM: "check the folder's owner and permissions",
    # a bind mount (which os.path.ismount cannot see) or a folder another program holds
    errno.EBUSY: "a mount point cannot be renamed; mount the disk elsewhere and link to a folder on it",
    errno.EXDEV: "a rename across disks; link to a folder on that disk instead",
}
DISK_WRITE_ERRNOS = frozenset(_DISK_HINTS)


@contextlib.contextmanager
def disk_errors_reported(output: Path) -> Iterator[None]:
    """A full, read-only or forbidden disk while the block writes `output`: one line naming it.

    The block writes through `atomic_path` / folders.py's `atomic_directory`, so nothing half-written is left
    and the message can say so. Other OSErrors keep their traceback: those are bugs, not the disk.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_WRITE_ERRNOS:
            raise
        raise PipelineError(_disk_problem(error, Path(output))) from None


def _disk_problem(error: OSError, output: Path) -> str:
    problem = f"{error.strerror or error}; {_DISK_HINTS[error.errno]}"
    # our temporary names live beside the output, or inside it when it is a link or mount point
    ours = (Path(os.path.abspath(output)).parent, Path(os.path.realpath(output)))
    if error.filename and not any(
        Path(os.path.abspath(error.filename)).is_relative_to(folder) for folder in ours
    ):
        return f"{error.filename}: {problem} (while writing {output}, which is unchanged)"
    return f"{output}: could not write it ({problem}); nothing there was changed"


_held_locks: dict[str, int] = {}  # real path → nesting depth, for this process's own locks


@contextlib.contextmanager
def folder_lock(folder: Path, holder: str = "fetch or prepare") -> Iterator[None]:
    """Keep other processes from writing outputs in `folder` while the block runs.

    Debris removal relies on it: a `.NAME.pipeline-*.tmp` left in a locked folder belongs to a
    killed run, never to a live one. The lock is flock on the folder itself (no lock file to
    leave behind), re-entrant within a process; a file system without locks (some network
    mounts) goes unlocked.
    """
    key = os.path.realpath(folder)
    if key in _held_locks or fcntl is None:
        _held_locks[key] = _held_locks.get(key, 0) + 1
        try:
            yield
        finally:
            _held_locks[key] -= 1
            if not _held_locks[key]:
                del _held_locks[key]
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"{folder}: another pipeline process is writing here ({holder}); wait for it "
                "to finish, then run again"
            ) from None
        except OSError:  # ENOLCK, EOPNOTSUPP: no locks on this file system
            pass
        _held_locks[key] = 1
        try:
            yield
        finally:
            del _held_locks[key]
    finally:
        os.close(descriptor)  # closing releases the flock


MD5_CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 of a file's bytes (what DVC and the manifests record), read 1 MiB at a time."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(MD5_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
