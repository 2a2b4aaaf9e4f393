"""Atomic file and folder writes: an output appears whole or not at all.

Every stage writes through these helpers, so a crash or an error mid-write never leaves a
half-written file where the next stage (or DVC) would take it for a finished one. Outputs get the
mode a plain `open()` or `mkdir()` gives (0666 / 0777 less the umask), and a full, read-only or
forbidden disk is one line naming the output (`disk_errors_reported`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are then not kept apart
    fcntl = None

TEMP_NAME_ATTEMPTS = 100  # random 8-hex-digit names: a clash is already one in four billion


def _new_temp(final: Path, create: Callable[[Path], None]) -> Path:
    """Create `.NAME.<random>.tmp` beside `final` with `create`, which must refuse an existing name."""
    for _ in range(TEMP_NAME_ATTEMPTS):
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(temp)
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(final.parent))


def _create_file(path: Path) -> None:
    # 0o666 less the umask, as open() gives; tempfile.mkstemp would make it 0600 whatever the umask
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_folder(path: Path) -> None:
    path.mkdir(mode=0o777)  # less the umask, as mkdir gives; tempfile.mkdtemp would make it 0700


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = _new_temp(final_path, _create_file)
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


DISK_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_DISK_HINTS = {
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "the disk is mounted read-only",
    errno.EACCES: "check the folder's owner and permissions",
    errno.EPERM: "check the folder's owner and permissions",
}


@contextlib.contextmanager
def disk_errors_reported(output: Path) -> Iterator[None]:
    """A full, read-only or forbidden disk while the block writes `output`: one line naming it.

    The block writes through `atomic_path` / `atomic_directory`, so nothing half-written is left
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
    ours = Path(os.path.abspath(output)).parent  # our temporary names live beside the output
    if error.filename and not Path(os.path.abspath(error.filename)).is_relative_to(ours):
        return f"{error.filename}: {problem} (while writing {output}, which is unchanged)"
    return f"{output}: could not write it ({problem}); nothing there was changed"


_held_locks: dict[str, int] = {}  # real path → nesting depth, for this process's own locks


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Keep other processes from writing outputs in `folder` while the block runs.

    Debris removal relies on it: a `.NAME.*.tmp` left in a locked folder belongs to a killed
    run, never to a live one. The lock is flock on the folder itself (no lock file to leave
    behind), re-entrant within a process; a file system without locks (some network mounts)
    goes unlocked.
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
                f"{folder}: another pipeline process is writing here (fetch or prepare); wait "
                "for it to finish, then run again"
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


def _aside_name(final_dir: Path) -> Path:
    return final_dir.with_name(f".{final_dir.name}.old")


def _remove(path: Path) -> None:
    """Delete a file, folder or link; a link is unlinked, never followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_debris(folder: Path, pattern: str) -> None:
    """Remove what killed runs left in `folder` under `pattern` (one of our own prefixes)."""
    with folder_lock(folder):
        for debris in Path(folder).glob(pattern):
            _remove(debris)


def _link_target(path: Path) -> Path:
    """`path`, or for a symlink the folder it points to: a linked output is replaced where it
    lives, so the link (to a bigger disk, a shared folder) stays as the user made it."""
    return path.resolve() if path.is_symlink() else path


def recover_directory(final_dir: Path) -> None:
    """Undo what a killed `atomic_directory` left around `final_dir`.

    Killed between the swap's two renames, it leaves no `final_dir` but the previous contents
    whole in `.NAME.old`: they are put back. Then the temporary folders of killed runs
    (`.NAME.*.tmp`) and a stale `.NAME.old` are removed; nothing else is touched.
    """
    final_dir = _link_target(Path(final_dir))
    if not final_dir.parent.is_dir():
        return
    with folder_lock(final_dir.parent):
        aside = _aside_name(final_dir)
        if os.path.lexists(aside) and not os.path.lexists(final_dir):
            os.replace(aside, final_dir)
        remove_debris(final_dir.parent, f".{final_dir.name}.*.tmp")
        _remove(aside)


@contextlib.contextmanager
def atomic_directory(final_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final_dir` (old contents removed).

    The swap is two renames (final → `.NAME.old`, temporary → final); a run killed between
    them is undone by the next one (`recover_directory`). A symlinked `final_dir` is replaced
    at its target and the link kept.
    """
    final_dir = Path(final_dir)
    target = _link_target(final_dir)
    if final_dir.is_symlink() and not target.is_dir() and not os.path.lexists(_aside_name(target)):
        raise PipelineError(
            f"{final_dir}: a link to {target}, which is not a folder (an unmounted drive?); fix "
            "the link, or remove it to write a folder here"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target.parent):
        recover_directory(target)
        temp_dir = _new_temp(target, _create_folder)
        try:
            yield temp_dir
            _swap_in(temp_dir, target)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _swap_in(temp_dir: Path, final_dir: Path) -> None:
    if os.path.lexists(final_dir):
        aside = _aside_name(final_dir)
        os.replace(final_dir, aside)
        # killed here, between the renames: the next run's recover_directory puts `aside` back
        os.replace(temp_dir, final_dir)
        _remove(aside)
    else:
        os.replace(temp_dir, final_dir)
    _sync(final_dir.parent)


MD5_CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 of a file's bytes (what DVC and the manifests record), read 1 MiB at a time."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(MD5_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
