"""Unpacking a zip or tar archive of the data's files, refusing unsafe members: links, devices,
paths that climb out, sizes beyond what CIFAR-10 ships, and more members than it could hold.
fetch (stages/fetch.py) and data/locate.py unpack every archive through `extract_archive`.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError

UNPACK_CHUNK_BYTES = 1 << 20
# Caps on what one archive may unpack, from the sizes CIFAR-10 ships: a batch pickle or the custom
# test pickle is ~31 MB (10,000 images x 3,072 bytes), the CIFAR-10 tarball inside a competition
# zip 163 MiB, the whole competition zip ~400 MB unpacked. Checked against each member's declared
# size before anything is written, and again byte by byte while unpacking (headers can lie).
MAX_MEMBER_BYTES = 128 << 20  # any one file: 4x the largest CIFAR-10 file
MAX_NESTED_ARCHIVE_BYTES = 256 << 20  # a member that is itself an archive (the tarball)
NESTED_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_UNPACKED_BYTES = 1 << 30  # all members together
MAX_MEMBERS = 1000  # CIFAR-10 archives hold about ten; a million empty ones would eat the inodes
ZIP_ENCRYPTED_FLAG = 0x1
ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError)
TAR_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


@dataclass(frozen=True)
class _Member:
    name: str
    declared_bytes: int  # what the archive's header says the member unpacks to
    is_folder: bool
    is_link_or_device: bool


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract a .zip or .tar(.gz): only regular files and folders, all inside `destination`.

    Links, devices, absolute names and '..' are refused outright (CIFAR-10 archives hold none),
    rather than trusting tarfile's filters, which link chains have bypassed (CVE-2025-4517); so
    are members over the size caps above. Reading a member is an archive problem (one line
    naming it); writing one raises the OSError itself, for the caller to report as a disk problem.
    """
    _require_regular_file(archive)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, destination)
    else:
        _extract_tar(archive, destination)


def _require_regular_file(path: Path) -> None:
    """Refuse a device, FIFO or socket before opening it: reading /dev/zero or a FIFO never ends."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise PipelineError(
            f"{path}: not a regular file ({kind}); expected a .zip or .tar.gz archive"
        )


def _extract_zip(archive: Path, destination: Path) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise _unreadable_zip(archive, error) from None
    with bundle:
        infos = bundle.infolist()
        for info in infos:
            if info.flag_bits & ZIP_ENCRYPTED_FLAG:
                raise PipelineError(
                    f"{archive}: member '{info.filename}' is encrypted (password-protected); "
                    "unpack the archive yourself and set data.path to the folder"
                )
        members = [_zip_member(info) for info in infos]
        _check_members(archive, destination, members)
        openers = [lambda info=info: bundle.open(info) for info in infos]
        entries = list(zip(members, openers, strict=True))
        _unpack(archive, destination, entries, ZIP_READ_ERRORS, _unreadable_zip)


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    is_symlink = (info.external_attr >> 16) & 0o170000 == 0o120000
    return _Member(info.filename, info.file_size, info.is_dir(), is_symlink)


def _unreadable_zip(archive: Path, error: BaseException) -> PipelineError:
    return PipelineError(f"{archive}: corrupt .zip archive ({error})")


def _extract_tar(archive: Path, destination: Path) -> None:
    try:
        tar = tarfile.open(archive)  # noqa: SIM115 - closed below; this try covers reading only
        tar_members = tar.getmembers()  # reads every header (and, gzipped, all the data)
    except TAR_READ_ERRORS as error:
        raise _unreadable_tar(archive, error) from None
    with tar:
        members = [_tar_member(member) for member in tar_members]
        _check_members(archive, destination, members)
        openers = [lambda member=member: tar.extractfile(member) for member in tar_members]
        entries = list(zip(members, openers, strict=True))
        _unpack(archive, destination, entries, TAR_READ_ERRORS, _unreadable_tar)


def _tar_member(member: tarfile.TarInfo) -> _Member:
    is_file, is_folder = member.isfile(), member.isdir()
    return _Member(
        member.name, member.size if is_file else 0, is_folder, not (is_file or is_folder)
    )


def _unreadable_tar(archive: Path, error: BaseException) -> PipelineError:
    reason = str(error).strip().splitlines()[0].rstrip(":") if str(error).strip() else ""
    return PipelineError(
        f"{archive}: not a readable .zip or .tar.gz archive ({type(error).__name__}: {reason})"
    )


def _check_members(archive: Path, destination: Path, members: list[_Member]) -> None:
    """Names and declared sizes, all checked before anything is written."""
    if len(members) > MAX_MEMBERS:
        raise PipelineError(
            f"{archive}: holds {len(members):,} members, more than the {MAX_MEMBERS} any "
            "CIFAR-10 archive needs (refused before unpacking)"
        )
    for member in members:
        _check_member_name(archive, member.name, destination, member.is_link_or_device)
    for member in members:
        if member.declared_bytes > _member_cap(member.name):
            raise PipelineError(_oversized_member(archive, member.name, _member_cap(member.name)))
    total = sum(member.declared_bytes for member in members)
    if total > MAX_UNPACKED_BYTES:
        raise PipelineError(
            f"{archive}: unpacks to {total:,} bytes, more than the {MAX_UNPACKED_BYTES >> 20} MiB "
            "any CIFAR-10 archive needs (refused before unpacking)"
        )


def _member_cap(name: str) -> int:
    return MAX_NESTED_ARCHIVE_BYTES if name.endswith(NESTED_ARCHIVE_SUFFIXES) else MAX_MEMBER_BYTES


def _oversized_member(archive: Path, name: str, limit: int) -> str:
    return (
        f"{archive}: refused member '{name}': it unpacks to more than {limit >> 20} MiB, more "
        "than a CIFAR-10 archive ever holds (a zip bomb, or the wrong archive?)"
    )


def _check_member_name(
    archive: Path, name: str, destination: Path, is_link_or_device: bool
) -> None:
    root = destination.resolve()
    escapes = not (root / name).resolve().is_relative_to(root)
    if is_link_or_device or name.startswith(("/", "\\")) or escapes:
        raise PipelineError(
            f"{archive}: refused unsafe archive member '{name}' (absolute path, '..', link or device)"
        )


ReadErrors = tuple[type[BaseException], ...]
Unreadable = Callable[[Path, BaseException], PipelineError]


def _unpack(
    archive: Path,
    destination: Path,
    members: list[tuple[_Member, Callable[[], IO[bytes]]]],
    read_errors: ReadErrors,
    unreadable: Unreadable,
) -> None:
    """Write each member under `destination`, counting bytes against the caps as they come."""
    unpacked = 0
    for member, open_member in members:
        target = destination / member.name
        if member.is_folder:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        limit = min(_member_cap(member.name), MAX_UNPACKED_BYTES - unpacked)
        try:
            source = open_member()
        except read_errors as error:
            raise unreadable(archive, error) from None
        with source, target.open("wb") as sink:
            unpacked += _copy_capped(
                archive, member.name, source, sink, limit, read_errors, unreadable
            )


def _copy_capped(
    archive: Path,
    name: str,
    source: IO[bytes],
    sink: IO[bytes],
    limit: int,
    read_errors: ReadErrors,
    unreadable: Unreadable,
) -> int:
    """Copy `source` to `sink`, refusing more than `limit` bytes; return the bytes copied."""
    copied = 0
    while True:
        try:
            chunk = source.read(UNPACK_CHUNK_BYTES)
        except read_errors as error:
            raise unreadable(archive, error) from None
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            raise PipelineError(_oversized_member(archive, name, limit))
        sink.write(chunk)  # an OSError here is the disk's (full, read-only), not the archive's
