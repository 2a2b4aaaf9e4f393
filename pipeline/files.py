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
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
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


def _temp_pattern(stem: str) -> str:
    """The glob matching `_new_temp(folder, stem, ...)`'s names, and nothing a user would name."""
    return f".{stem}{OWN_MARK}-*.tmp"


def _new_temp(folder: Path, stem: str, create: Callable[[Path], None]) -> Path:
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


def _create_folder(path: Path) -> None:
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
    temp_path = _new_temp(final_path.parent, f"{final_path.name}.", _create_file)
    try:
        yield temp_path
        if final_path.exists() and not final_path.is_symlink():  # a new file: the umask's mode
            os.chmod(temp_path, stat.S_IMODE(os.stat(final_path).st_mode))
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
    # our temporary names live beside the output, or inside it when it is a link or mount point
    ours = (Path(os.path.abspath(output)).parent, Path(os.path.realpath(output)))
    if error.filename and not any(
        Path(os.path.abspath(error.filename)).is_relative_to(folder) for folder in ours
    ):
        return f"{error.filename}: {problem} (while writing {output}, which is unchanged)"
    return f"{output}: could not write it ({problem}); nothing there was changed"


_held_locks: dict[str, int] = {}  # real path → nesting depth, for this process's own locks


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
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


# --- folders: swapped in beside, or filled in place --------------------------------------------
#
# A plain output folder is built beside itself and swapped in with two renames (`_swap_beside`).
# A folder that must stay where it is is filled in place: the target of a symlinked output (the
# user's folder, maybe on another disk, among their own files) or a mount point (renaming one is
# EBUSY). Its temporary folder is made inside it, so on its file system, and the contents are
# swapped (`_swap_contents`); nothing beside it is ever created, renamed or removed.

IN_PLACE_ASIDE = f".{OWN_MARK}.old"  # inside a folder filled in place: its previous contents
COMPLETE_MARKER = f".{OWN_MARK}-complete"  # inside that folder's temporary one: it is whole
FILESYSTEM_ENTRIES = frozenset({"lost+found"})  # what a fresh disk's root holds: never moved


def _aside_name(final_dir: Path) -> Path:
    return final_dir.with_name(f".{final_dir.name}.{OWN_MARK}.old")


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


def _filled_in_place(final_dir: Path) -> bool:
    return final_dir.is_symlink() or os.path.ismount(final_dir)


def _in_place_target(final_dir: Path) -> Path:
    """The folder a linked or mounted `final_dir` is filled in: the link's target, or itself.

    A link to the file system's root, the home folder or a folder holding the link itself is
    refused: filling it in place would move everything else there aside.
    """
    if not final_dir.is_symlink():
        return final_dir
    target = Path(os.path.realpath(final_dir))
    try:
        home = Path(os.path.realpath(Path.home()))
    except RuntimeError:  # no $HOME and no password entry
        home = None
    if target == Path(target.anchor):
        what = "the file system's root"
    elif target == home:
        what = "your home folder"
    elif Path(os.path.realpath(final_dir.parent)).is_relative_to(target):
        what = "a folder that holds the link itself"
    else:
        return target
    raise PipelineError(
        f"{final_dir}: a link to {target}, {what}; an output needs a folder of its own: point "
        "the link at an empty folder, or remove it"
    )


def _others_in(target: Path) -> list[Path]:
    """`target`'s entries but this module's own in-place names and a disk's `lost+found`."""
    own = (IN_PLACE_ASIDE, *FILESYSTEM_ENTRIES)
    return sorted(
        entry
        for entry in target.iterdir()
        if entry.name not in own and not fnmatch.fnmatchcase(entry.name, _temp_pattern(""))
    )


def _new_contents(temp_dir: Path) -> list[Path]:
    return sorted(entry for entry in temp_dir.iterdir() if entry.name != COMPLETE_MARKER)


def _move_all(entries: list[Path], folder: Path) -> None:
    for entry in entries:
        os.replace(entry, folder / entry.name)


def recover_directory(final_dir: Path) -> None:
    """Undo what a killed `atomic_directory` left at `final_dir`; nothing else is touched.

    Beside a plain folder: killed between the swap's two renames, it leaves no `final_dir` but
    the previous contents whole in `.NAME.pipeline.old`, which are put back; then the killed
    runs' `.NAME.pipeline-*.tmp` and a stale `.NAME.pipeline.old` are removed. Inside a folder
    filled in place, only its own `.pipeline-*` names (`_recover_contents`). The folder holding
    a link's target is the user's: it is never looked in.
    """
    final_dir = Path(final_dir)
    if _filled_in_place(final_dir):
        target = _in_place_target(final_dir)
        if target.is_dir():
            with folder_lock(target):
                _recover_contents(target)
        return
    if not final_dir.parent.is_dir():
        return
    with folder_lock(final_dir.parent):
        aside = _aside_name(final_dir)
        if os.path.lexists(aside) and not os.path.lexists(final_dir):
            os.replace(aside, final_dir)
        remove_debris(final_dir.parent, _temp_pattern(f"{final_dir.name}."))
        _remove(aside)


def _recover_contents(target: Path) -> None:
    """Finish or undo a killed `_swap_contents`: its marker says which."""
    aside = target / IN_PLACE_ASIDE
    temps = sorted(target.glob(_temp_pattern("")))
    whole = [temp for temp in temps if (temp / COMPLETE_MARKER).is_file()]
    if whole:  # killed while the new contents moved in: move the rest in
        _move_all(_new_contents(whole[0]), target)
        _remove(aside)
    elif aside.is_dir():  # killed while the old contents moved out: put them back
        _move_all(sorted(aside.iterdir()), target)
        _remove(aside)
    for temp in temps:
        _remove(temp)


@contextlib.contextmanager
def atomic_directory(final_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success its contents replace `final_dir`'s.

    A plain folder is swapped with two renames (final → `.NAME.pipeline.old`, temporary →
    final); a run killed between them is undone by the next one (`recover_directory`). A
    symlinked `final_dir` (its target is filled, the link kept) or a mount point is filled in
    place: the temporary folder is made inside it and the contents swapped (`_swap_contents`).
    """
    final_dir = Path(final_dir)
    in_place = _filled_in_place(final_dir)
    target = _in_place_target(final_dir) if in_place else final_dir
    if in_place and not target.is_dir():
        raise PipelineError(
            f"{final_dir}: a link to {target}, which is not a folder (an unmounted drive?); fix "
            "the link, or remove it to write a folder here"
        )
    folder, stem = (target, "") if in_place else (target.parent, f"{target.name}.")
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        recover_directory(final_dir)
        temp_dir = _new_temp(folder, stem, _create_folder)
        try:
            yield temp_dir
            (_swap_contents if in_place else _swap_beside)(temp_dir, target)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _swap_beside(temp_dir: Path, final_dir: Path) -> None:
    if os.path.lexists(final_dir):
        aside = _aside_name(final_dir)
        os.replace(final_dir, aside)
        # killed here, between the renames: the next run's recover_directory puts `aside` back
        os.replace(temp_dir, final_dir)
        _remove(aside)
    else:
        os.replace(temp_dir, final_dir)
    _sync(final_dir.parent)


def _swap_contents(temp_dir: Path, target: Path) -> None:
    """Replace `target`'s contents with those of `temp_dir` (inside it), keeping `target` itself.

    Renames within one file system, in three steps: the old contents into `.pipeline.old`
    (killed here, the next run puts them back), the marker that makes `temp_dir` whole, the new
    contents in (killed here, the next run moves the rest in). A failed step is undone before
    the error goes on, so the folder holds its old contents or its new ones, never a mix.
    """
    aside = target / IN_PLACE_ASIDE
    aside.mkdir()
    try:
        _move_all(_others_in(target), aside)
    except BaseException:
        _move_all(sorted(aside.iterdir()), target)
        aside.rmdir()
        raise
    _sync(aside)
    _sync(target)
    marker = temp_dir / COMPLETE_MARKER
    marker.touch()
    _sync(temp_dir)
    try:
        _move_all(_new_contents(temp_dir), target)
    except BaseException:  # back into temp_dir while the marker is there, then the old ones back
        _move_all(_others_in(target), temp_dir)
        marker.unlink()
        _move_all(sorted(aside.iterdir()), target)
        aside.rmdir()
        raise
    _sync(target)
    shutil.rmtree(aside)  # before the marker goes: without it, the next run would undo the swap


MD5_CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 of a file's bytes (what DVC and the manifests record), read 1 MiB at a time."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(MD5_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
