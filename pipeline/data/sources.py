"""Getting the data's files: URL downloads with retries and checks, and archive extraction
that refuses unsafe members. fetch (stages/fetch.py) uses both for every source."""

from __future__ import annotations

import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.reporting import console, download_progress

DOWNLOAD_ATTEMPTS = 4
DOWNLOAD_BACKOFF_SECONDS = 2.0  # doubled after each failed attempt


def download_file(url: str, destination: Path, md5: str | None) -> None:
    """Stream `url` to `destination` with a progress bar, retrying transient failures.

    The file lands only after its length and (if given) md5 check out; a client error (4xx) is
    not retried.
    """
    from torchvision.datasets.utils import check_integrity  # heavy import, only when downloading

    delay = DOWNLOAD_BACKOFF_SECONDS
    last_problem = ""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with atomic_path(destination) as temp_path:
                _stream_to(url, temp_path)
                if md5 is not None and not check_integrity(str(temp_path), md5):
                    raise _TransientDownloadError(f"md5 mismatch (expected {md5})")
            return
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code not in (408, 429):
                raise PipelineError(
                    f"{url}: download failed: HTTP {error.code} {error.reason}"
                ) from None
            last_problem = f"HTTP {error.code} {error.reason}"
        except (_TransientDownloadError, urllib.error.URLError, OSError) as error:
            last_problem = str(getattr(error, "reason", None) or error)
        if attempt < DOWNLOAD_ATTEMPTS:
            console.print(
                f"[yellow]download attempt {attempt} failed ({last_problem}); retrying in {delay:.0f} s"
            )
            time.sleep(delay)
            delay *= 2
    raise PipelineError(
        f"{url}: download failed after {DOWNLOAD_ATTEMPTS} attempts: {last_problem}"
    )


class _TransientDownloadError(Exception):
    pass


def _stream_to(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as handle:
        expected = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with download_progress() as progress:
            task = progress.add_task(Path(url).name or url, total=expected)
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                received += len(chunk)
                progress.update(task, advance=len(chunk))
    if expected is not None and received != expected:
        raise _TransientDownloadError(f"connection closed after {received} of {expected} bytes")


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract a .zip or .tar(.gz): only regular files and folders, all inside `destination`.

    Links, devices, absolute names and '..' are refused outright (CIFAR-10 archives hold none),
    rather than trusting tarfile's filters, which link chains have bypassed (CVE-2025-4517).
    """
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, destination)
        return
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(
                    archive, member.name, destination, not (member.isfile() or member.isdir())
                )
            for member in members:
                target = destination / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        reason = str(error).strip().splitlines()[0].rstrip(":") if str(error).strip() else ""
        raise PipelineError(
            f"{archive}: not a readable .zip or .tar.gz archive ({type(error).__name__}: {reason})"
        ) from None


def _check_member_name(
    archive: Path, name: str, destination: Path, is_link_or_device: bool
) -> None:
    root = destination.resolve()
    escapes = not (root / name).resolve().is_relative_to(root)
    if is_link_or_device or name.startswith(("/", "\\")) or escapes:
        raise PipelineError(
            f"{archive}: refused unsafe archive member '{name}' (absolute path, '..', link or device)"
        )


def _extract_zip(archive: Path, destination: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                is_symlink = (member.external_attr >> 16) & 0o170000 == 0o120000
                _check_member_name(archive, member.filename, destination, is_symlink)
            bundle.extractall(destination)
    except (zipfile.BadZipFile, OSError) as error:
        raise PipelineError(f"{archive}: corrupt .zip archive ({error})") from None
