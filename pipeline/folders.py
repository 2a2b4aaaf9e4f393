"""Atomic folder writes: an output folder appears whole or not at all, and a crash mid-swap is
recovered on the next run (`recover_directory`).

A plain output folder is built beside itself and swapped in with two renames (`_swap_beside`).
A folder that must stay where it is is filled in place: the target of a symlinked output (the
user's folder, maybe on another disk, among their own files) or a mount point (renaming one is
EBUSY). Its temporary folder is made inside it, so on its file system, and the contents are
swapped (`_swap_contents`); nothing beside it is ever created, renamed or removed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import (
    OWN_MARK,
    create_folder,
    folder_lock,
    new_temp,
    sync_to_disk,
    temp_pattern,
)

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
        if entry.name not in own and not fnmatch.fnmatchcase(entry.name, temp_pattern(""))
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
        remove_debris(final_dir.parent, temp_pattern(f"{final_dir.name}."))
        _remove(aside)


def _recover_contents(target: Path) -> None:
    """Finish or undo a killed `_swap_contents`: its marker says which."""
    aside = target / IN_PLACE_ASIDE
    temps = sorted(target.glob(temp_pattern("")))
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
        temp_dir = new_temp(folder, stem, create_folder)
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
    sync_to_disk(final_dir.parent)


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
    sync_to_disk(aside)
    sync_to_disk(target)
    marker = temp_dir / COMPLETE_MARKER
    marker.touch()
    sync_to_disk(temp_dir)
    try:
        _move_all(_new_contents(temp_dir), target)
    except BaseException:  # back into temp_dir while the marker is there, then the old ones back
        _move_all(_others_in(target), temp_dir)
        marker.unlink()
        _move_all(sorted(aside.iterdir()), target)
        aside.rmdir()
        raise
    sync_to_disk(target)
    shutil.rmtree(aside)  # before the marker goes: without it, the next run would undo the swap
