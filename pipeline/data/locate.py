"""Where the competition's files are: in a user's folder (data/input, data.path), an archive
(the competition's zip, a CIFAR-10 tarball inside it), or data/raw itself.

`find_raw_files` (data/formats.py) finds the batches folder and the custom test pickle at any
depth; here an archive is unpacked into fetch's scratch when a folder holds one instead, and two
copies (unpacked beside an archive, a pickle inside and beside it) are refused naming both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.data.archives import extract_archive
from pipeline.data.formats import CIFAR_FOLDER, find_raw_files, not_junk
from pipeline.errors import PipelineError
from pipeline.paths import INPUT_DIR

INPUT_README = "README.md"  # data/input's own note (committed): not data

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")  # any case: a download renamed COMP.ZIP too
NESTED_ARCHIVES = 2  # the competition's zip, and a CIFAR-10 tarball inside it: no deeper


def archives_in(folder: Path, anywhere: bool = False) -> list[Path]:
    """The zip and tar archives at the top of `folder` (at any depth with `anywhere`), macOS's
    `__MACOSX/` and `._name` copies left out."""
    folder = Path(folder)
    entries = folder.rglob("*") if anywhere else folder.glob("*")
    return sorted(
        path for path in entries
        if path.name.lower().endswith(ARCHIVE_SUFFIXES) and path.is_file()
        and not_junk(path, folder)
    )  # fmt: skip


def locate_files(
    folder: Path, scratch: Path, user_folder: bool = False, depth: int = 0
) -> tuple[Path | None, Path | None]:
    """Find the `cifar-10-batches-py` folder and the custom test pickle anywhere under `folder`.

    A folder holding an archive instead (the competition's zip as downloaded, or the CIFAR-10
    tarball, even inside the zip) has it extracted into `scratch`, never beside the user's file.
    In a `user_folder` (data/input, data.path) an archive is looked for at any depth, and an
    archive beside unpacked files, or a pickle both inside and beside it, is refused naming
    both: which copy trains would otherwise be a silent choice.
    """
    batches_dir, custom_test = find_raw_files(folder)
    archives = archives_in(folder, anywhere=True) if user_folder else []
    if batches_dir is not None and archives:
        raise PipelineError(
            f"{folder}: holds both {batches_dir} and the archive {archives[0]}; keep one of them"
        )
    if batches_dir is None:
        archives = archives or sorted(folder.rglob("cifar-10-python.tar.gz"))
        if len(archives) > 1:
            raise PipelineError(
                f"{folder}: holds {len(archives)} archives ({archives[0]} and {archives[1]}); "
                "keep the competition's zip only"
            )
        if archives and depth < NESTED_ARCHIVES:
            nested = Path(tempfile.mkdtemp(prefix="nested-", dir=scratch))
            extract_archive(archives[0], nested)
            batches_dir, inner_test = locate_files(nested, scratch, depth=depth + 1)
            if custom_test is not None and inner_test is not None:
                raise PipelineError(
                    f"{folder}: holds {custom_test} and another custom test pickle inside "
                    f"{archives[0].name}; keep one of them"
                )
            custom_test = custom_test or inner_test
    if batches_dir is None and user_folder:
        held = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise PipelineError(
            f"{folder}: no {CIFAR_FOLDER}/ folder and no competition zip found (it holds: "
            f"{', '.join(held[:5]) or 'nothing'}); put the zip from the competition's Data page "
            "there"
        )
    return batches_dir, custom_test


def raw_files_present(raw_dir: Path) -> bool:
    """Whether `raw_dir` holds the batches and the custom test pickle at any depth (looked up
    only, nothing extracted)."""
    if not raw_dir.is_dir():
        return False
    return None not in find_raw_files(raw_dir)


def input_folder(raw_dir: Path) -> Path:
    """data/input beside data/raw (INPUT_DIR for the project's own)."""
    return raw_dir.parent / INPUT_DIR.name


def input_files(input_dir: Path) -> list[Path]:
    """What a user put in data/input (its README and dot files such as .DS_Store aside)."""
    if not input_dir.is_dir():
        return []
    return sorted(
        entry for entry in input_dir.iterdir()
        if entry.name != INPUT_README and not entry.name.startswith(".")
    )  # fmt: skip
