"""fetch: every source, archive safety, downloads against a loopback server, atomic landing,
secrets in URLs, linked and interrupted data/raw folders, full disks and the umask."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import http.client
import http.server
import importlib
import io
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO_ROOT, SMALL_SYNTHETIC, write_small_custom_test

from pipeline.config.params import DataParams, PrepareParams
from pipeline.data import archives, sources
from pipeline.data.formats import CIFAR_FILES, CIFAR_FOLDER
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic
from pipeline.folders import atomic_directory, recover_directory
from pipeline.integrations import kaggle_client
from pipeline.records.fetch_record import FETCH_RECORD
from pipeline.stages import fetch, prepare


@pytest.fixture(autouse=True)
def no_kaggle_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # never this machine's ~/.netrc
    monkeypatch.delenv(fetch.CIFAR_URL_VARIABLE, raising=False)


@pytest.fixture(scope="session")
def custom_test_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("custom") / "cifar_test_nolabel.pkl"
    write_small_custom_test(path, count=30)
    return path


@pytest.fixture(scope="session")
def official_tarball(official_sized_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tarball") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(official_sized_cifar / CIFAR_FOLDER, arcname=CIFAR_FOLDER)
    return path


@pytest.fixture(scope="session")
def competition_zip(
    official_sized_cifar: Path, custom_test_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The Kaggle bundle's layout: cifar-10-python/cifar-10-batches-py/* and cifar_test_nolabel.pkl."""
    path = tmp_path_factory.mktemp("zip") / "deep-learning-spring-2025-project-1.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as bundle:
        for name in CIFAR_FILES:
            bundle.write(
                official_sized_cifar / CIFAR_FOLDER / name, f"cifar-10-python/{CIFAR_FOLDER}/{name}"
            )
        bundle.write(custom_test_file, "cifar_test_nolabel.pkl")
    return path


def _raw(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raw"


def _assert_complete(raw_dir: Path) -> None:
    assert sorted(p.name for p in (raw_dir / CIFAR_FOLDER).iterdir()) == sorted(CIFAR_FILES)
    assert (raw_dir / "cifar_test_nolabel.pkl").is_file()
    leftovers = [p.name for p in raw_dir.parent.iterdir() if p.name != "raw"]
    assert leftovers == []


def test_synthetic_source_writes_the_official_layout(tmp_path: Path) -> None:
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))


def test_synthetic_data_is_deterministic(tmp_path: Path) -> None:
    params = DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC)
    fetch.run(params, tmp_path / "a" / "raw")
    fetch.run(params, tmp_path / "b" / "raw")
    for name in CIFAR_FILES:
        path_a, path_b = (tmp_path / x / "raw" / CIFAR_FOLDER / name for x in "ab")
        assert path_a.read_bytes() == path_b.read_bytes()


def test_local_competition_zip_is_unpacked_and_checked(
    tmp_path: Path, competition_zip: Path
) -> None:
    fetch.run(DataParams(source="local", path=str(competition_zip)), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))


def test_local_tarball_with_custom_test_path(
    tmp_path: Path, official_tarball: Path, custom_test_file: Path
) -> None:
    params = DataParams(
        source="local", path=str(official_tarball), custom_test_path=str(custom_test_file)
    )
    fetch.run(params, _raw(tmp_path))
    _assert_complete(_raw(tmp_path))


def test_local_folder_source(
    tmp_path: Path, official_sized_cifar: Path, custom_test_file: Path
) -> None:
    folder = tmp_path / "download"
    shutil.copytree(official_sized_cifar, folder)
    shutil.copy(custom_test_file, folder / "cifar_test_nolabel.pkl")
    fetch.run(DataParams(source="local", path=str(folder)), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))


def test_tarball_without_custom_test_asks_for_it(tmp_path: Path, official_tarball: Path) -> None:
    with pytest.raises(PipelineError, match="no custom test pickle; set data.custom_test_path"):
        fetch.run(DataParams(source="local", path=str(official_tarball)), _raw(tmp_path))
    assert not _raw(tmp_path).exists()


def test_user_archive_is_checked_by_structure_not_only_names(
    tmp_path: Path, custom_test_file: Path
) -> None:
    """A folder with the right names but a non-official count (here: the small synthetic set) is refused."""
    source = tmp_path / "small"
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), source)
    with pytest.raises(
        PipelineError, match="expected 10000 images as in the official archive, found 40"
    ):
        fetch.run(DataParams(source="local", path=str(source)), _raw(tmp_path))


def _zip_with(tmp_path: Path, member: str | zipfile.ZipInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr(member, data)
    return path


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("cifar-10-batches-py/data_batch_1")
    info.external_attr = 0o120777 << 16
    return info


@pytest.mark.parametrize(
    "member", ["../escape.pkl", "/abs/escape.pkl", "a/../../escape.pkl", _symlink_member()]
)
def test_zip_members_escaping_the_folder_are_refused(
    tmp_path: Path, member: str | zipfile.ZipInfo
) -> None:
    archive = _zip_with(tmp_path, member, b"/etc/passwd")
    with pytest.raises(PipelineError, match="refused unsafe archive member"):
        fetch.run(DataParams(source="local", path=str(archive)), _raw(tmp_path))
    assert not (tmp_path.parent / "escape.pkl").exists()


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "bundle.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info.size = len(data) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _tar_link(kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.type, info.linkname = kind, target
    return info


def _tar_symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "info",
    [
        tarfile.TarInfo("../escape.pkl"),
        tarfile.TarInfo("/abs/escape.pkl"),
        _tar_symlink(),
        _tar_link(tarfile.SYMTYPE, "batches.meta"),  # even a link that stays inside
        _tar_link(tarfile.LNKTYPE, "cifar-10-batches-py/batches.meta"),
        _tar_link(tarfile.CHRTYPE, ""),
    ],
)
def test_tar_members_escaping_the_folder_are_refused(tmp_path: Path, info: tarfile.TarInfo) -> None:
    archive = _tar_with(tmp_path, info, b"payload")
    with pytest.raises(PipelineError, match="refused unsafe archive member"):
        fetch.run(
            DataParams(source="local", path=str(archive), custom_test_path="x"), _raw(tmp_path)
        )
    assert not (tmp_path.parent / "escape.pkl").exists()


def test_a_folder_holding_the_tarball_is_left_untouched(
    tmp_path: Path, official_tarball: Path, custom_test_file: Path
) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(official_tarball, folder)
    shutil.copy(custom_test_file, folder)
    before = sorted(p.name for p in folder.iterdir())
    fetch.run(DataParams(source="local", path=str(folder)), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_non_archive_with_an_archives_name_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_text("<html>not found</html>")
    with pytest.raises(
        PipelineError, match=r"cifar-10-python.tar.gz: not a readable .zip or .tar.gz"
    ):
        fetch.run(DataParams(source="local", path=str(fake)), _raw(tmp_path))


def test_zip_missing_a_member_is_named(
    tmp_path: Path, official_sized_cifar: Path, custom_test_file: Path
) -> None:
    archive = tmp_path / "partial.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in CIFAR_FILES:
            if name != "test_batch":
                bundle.write(official_sized_cifar / CIFAR_FOLDER / name, f"{CIFAR_FOLDER}/{name}")
        bundle.write(custom_test_file, "cifar_test_nolabel.pkl")
    with pytest.raises(PipelineError, match="cifar-10-batches-py/test_batch is missing"):
        fetch.run(DataParams(source="local", path=str(archive)), _raw(tmp_path))


def test_failed_fetch_keeps_the_previous_data_and_leaves_no_temp_files(tmp_path: Path) -> None:
    raw_dir = _raw(tmp_path)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    before = {p.name: p.read_bytes() for p in (raw_dir / CIFAR_FOLDER).iterdir()}
    fake = tmp_path / "broken.zip"
    fake.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(PipelineError):
        fetch.run(DataParams(source="local", path=str(fake)), raw_dir)
    assert {p.name: p.read_bytes() for p in (raw_dir / CIFAR_FOLDER).iterdir()} == before
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]


def test_auto_uses_official_files_already_in_data_raw(
    tmp_path: Path, official_sized_cifar: Path, custom_test_file: Path
) -> None:
    raw_dir = _raw(tmp_path)
    shutil.copytree(official_sized_cifar, raw_dir)
    shutil.copy(custom_test_file, raw_dir / "cifar_test_nolabel.pkl")
    stamp = (raw_dir / CIFAR_FOLDER / "test_batch").stat().st_mtime_ns
    fetch.run(DataParams(source="auto"), raw_dir)
    assert (raw_dir / CIFAR_FOLDER / "test_batch").stat().st_mtime_ns == stamp


def test_auto_does_not_take_leftover_synthetic_data_for_real_data(tmp_path: Path) -> None:
    raw_dir = _raw(tmp_path)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    with pytest.raises(
        PipelineError, match="holds the synthetic demo's data, not the competition's"
    ):
        fetch.run(DataParams(source="auto"), raw_dir)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("source", ["synthetic", "local"])
def test_fetch_never_replaces_files_a_user_put_in_data_raw(
    tmp_path: Path, competition_zip: Path, source: str
) -> None:
    """The README's demo once left data.source: synthetic behind; the user's real files, put in
    data/raw by hand, were then replaced by synthetic data. Any source but auto is refused."""
    raw_dir = _raw(tmp_path)
    raw_dir.mkdir(parents=True)
    with zipfile.ZipFile(competition_zip) as bundle:
        bundle.extractall(raw_dir)
    before = _snapshot(raw_dir)
    params = DataParams(source=source, synthetic=SMALL_SYNTHETIC, path=str(competition_zip))
    with pytest.raises(
        PipelineError,
        match=rf"^{raw_dir}: holds what fetch did not write \(cifar-10-python, "
        rf"cifar-10-python/cifar-10-batches-py, cifar-10-python/cifar-10-batches-py/batches.meta "
        rf"and \d+ more\), and fetch never replaces it: move it out of {raw_dir} \(your own copy "
        rf"of the competition's files belongs in {tmp_path}/data/input/\)$",
    ):
        fetch.run(params, raw_dir)
    assert _snapshot(raw_dir) == before


def test_fetch_replaces_its_own_files_but_not_once_a_user_changed_them(tmp_path: Path) -> None:
    raw_dir = _raw(tmp_path)
    params = DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC)
    fetch.run(params, raw_dir)
    assert fetch.fetched_source(raw_dir) == "synthetic"
    fetch.run(
        dataclasses.replace(params, synthetic=dataclasses.replace(SMALL_SYNTHETIC, seed=1)), raw_dir
    )
    assert fetch.fetched_source(raw_dir) == "synthetic"
    (raw_dir / CIFAR_FOLDER / ".DS_Store").write_bytes(b"finder")  # a file browser's: not data
    fetch.run(params, raw_dir)
    (raw_dir / "mine").mkdir()
    (raw_dir / "elsewhere").symlink_to(tmp_path)
    with pytest.raises(
        PipelineError, match=r"holds what fetch did not write \(elsewhere, mine\), and fetch"
    ):
        fetch.run(params, raw_dir)
    assert (raw_dir / "elsewhere").is_symlink() and (raw_dir / "mine").is_dir()
    (raw_dir / "mine").rmdir()
    (raw_dir / "elsewhere").unlink()
    (raw_dir / "cifar_test_nolabel.pkl").write_bytes(b"mine now")
    assert fetch.fetched_source(raw_dir) is None
    with pytest.raises(
        PipelineError, match=r"holds what fetch did not write \(cifar_test_nolabel.pkl\)"
    ):
        fetch.run(params, raw_dir)
    assert (raw_dir / "cifar_test_nolabel.pkl").read_bytes() == b"mine now"


def test_a_file_where_data_raw_goes_is_never_replaced(tmp_path: Path) -> None:
    raw_dir = _raw(tmp_path)
    raw_dir.parent.mkdir(parents=True)
    raw_dir.write_text("my notes")
    with pytest.raises(
        PipelineError, match=r"holds what fetch did not write \(\(a file, not a folder\)\)"
    ):
        fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    assert raw_dir.read_text() == "my notes"


@pytest.mark.parametrize("layout", ["zip", "unzipped", "macos zip", "tarball and pickle"])
def test_auto_takes_what_a_user_put_in_data_input_and_never_changes_it(
    tmp_path: Path, competition_zip: Path, official_tarball: Path, custom_test_file: Path,
    layout: str, capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """data/input is the user's: the zip as downloaded, unpacked, re-zipped on a Mac (with
    __MACOSX/ and ._ copies), or the CIFAR-10 tarball with the pickle beside it."""
    input_dir, raw_dir = tmp_path / "data/input", _raw(tmp_path)
    input_dir.mkdir(parents=True)
    (input_dir / "README.md").write_text("the project's note")
    if layout == "zip":
        shutil.copy(competition_zip, input_dir)
    elif layout == "unzipped":
        with zipfile.ZipFile(competition_zip) as bundle:
            bundle.extractall(input_dir)
    elif layout == "macos zip":
        with (
            zipfile.ZipFile(competition_zip) as bundle,
            zipfile.ZipFile(input_dir / "comp.zip", "w") as mac,
        ):
            for name in bundle.namelist():
                mac.writestr(name, bundle.read(name))
                folder, _, base = name.rpartition("/")
                mac.writestr(f"__MACOSX/{folder}/._{base}".replace("//", "/"), b"\x00\x05\x16\x07")
        (input_dir / "._comp.zip").write_bytes(b"\x00\x05\x16\x07")
    else:
        shutil.copy(official_tarball, input_dir)
        shutil.copy(custom_test_file, input_dir / "cifar_test_nolabel.pkl")
    before = _snapshot(input_dir)
    fetch.run(DataParams(source="auto"), raw_dir)
    assert "the files you put in" in capsys.readouterr().err
    assert _snapshot(input_dir) == before
    assert fetch.fetched_source(raw_dir) == "local"
    assert (raw_dir / CIFAR_FOLDER / "data_batch_1").is_file()
    prepare.run(PrepareParams(), raw_dir, tmp_path / "prepared", tmp_path / "data.json")


def test_auto_finds_the_competition_zip_unpacked_in_data_raw_too(
    tmp_path: Path, competition_zip: Path, capsys: pytest.CaptureFixture
) -> None:
    """Files unzipped into data/raw itself are used where they are, with the advice to keep
    them in data/input: DVC restores data/raw from dvc.lock on `dvc exp run`."""
    raw_dir = _raw(tmp_path)
    raw_dir.mkdir(parents=True)
    with zipfile.ZipFile(competition_zip) as bundle:
        bundle.extractall(raw_dir)
    before = _snapshot(raw_dir)
    fetch.run(DataParams(source="auto"), raw_dir)
    err = capsys.readouterr().err
    assert "using the files already in" in err and "keep your own copy in" in err
    assert _snapshot(raw_dir) == before
    prepare.run(PrepareParams(), raw_dir, tmp_path / "prepared", tmp_path / "data.json")


@pytest.mark.parametrize(
    "layout",
    ["zip and its unpacked copy", "zip and a loose pickle", "nested too deep", "junk only"],
)
def test_data_input_with_two_copies_or_none_is_refused_naming_them(
    tmp_path: Path, competition_zip: Path, custom_test_file: Path, layout: str
) -> None:
    """Which copy trains must never be a silent choice; and nothing usable names what is there."""
    input_dir, raw_dir = tmp_path / "data/input", _raw(tmp_path)
    input_dir.mkdir(parents=True)
    if layout == "zip and its unpacked copy":
        shutil.copy(competition_zip, input_dir / "NEWER.ZIP")
        with zipfile.ZipFile(competition_zip) as bundle:
            bundle.extractall(input_dir / "old")
        expected = r"holds both .*cifar-10-batches-py and the archive .*NEWER.ZIP; keep one of them"
    elif layout == "zip and a loose pickle":
        shutil.copy(competition_zip, input_dir)
        shutil.copy(custom_test_file, input_dir / "cifar_test_nolabels.pkl")
        expected = (
            r"cifar_test_nolabels.pkl and another custom test pickle inside .*\.zip; keep one"
        )
    elif layout == "nested too deep":
        inner = competition_zip
        for level in range(3):  # a zip in a zip in a zip: only the zip and a tarball in it unpack
            outer = tmp_path / f"level{level}.zip"
            with zipfile.ZipFile(outer, "w") as bundle:
                bundle.write(inner, inner.name)
            inner = outer
        shutil.copy(inner, input_dir)
        expected = r"holds CIFAR-10 but no|no cifar-10-batches-py/ folder"
    else:
        (input_dir / "notes.txt").write_text("to do")
        expected = (
            rf"^{input_dir}: no cifar-10-batches-py/ folder and no competition zip found \(it "
            r"holds: notes.txt\); put the zip from the competition's Data page there$"
        )
    with pytest.raises(PipelineError, match=expected):
        fetch.run(DataParams(source="auto"), raw_dir)
    assert not raw_dir.exists()


def test_a_zip_in_a_subfolder_of_data_input_is_found(tmp_path: Path, competition_zip: Path) -> None:
    input_dir = tmp_path / "data/input"
    (input_dir / "downloads").mkdir(parents=True)
    shutil.copy(competition_zip, input_dir / "downloads" / "Comp.Zip")
    fetch.run(DataParams(source="auto"), _raw(tmp_path))
    assert fetch.fetched_source(_raw(tmp_path)) == "local"


def test_a_zip_dropped_in_data_raw_beside_its_files_is_pointed_to_data_input(
    tmp_path: Path, competition_zip: Path
) -> None:
    """data/raw already holds a fetch; a new zip dropped there would silently go unused."""
    raw_dir = _raw(tmp_path)
    fetch.run(DataParams(source="local", path=str(competition_zip)), raw_dir)
    shutil.copy(competition_zip, raw_dir / "newer.zip")
    with pytest.raises(
        PipelineError, match=r"newer.zip: an archive in .*; move it to .*data/input/"
    ):
        fetch.run(DataParams(source="auto"), raw_dir)


def test_a_zip_dropped_in_data_raw_is_pointed_to_data_input(
    tmp_path: Path, competition_zip: Path
) -> None:
    raw_dir = _raw(tmp_path)
    raw_dir.mkdir(parents=True)
    shutil.copy(competition_zip, raw_dir)
    with pytest.raises(
        PipelineError,
        match=rf"{competition_zip.name}: an archive in {raw_dir}, which fetch writes; move it to "
        rf"{tmp_path}/data/input/, where data.source: auto unpacks it",
    ):
        fetch.run(DataParams(source="auto"), raw_dir)
    assert sorted(p.name for p in raw_dir.iterdir()) == [competition_zip.name]


def test_two_copies_of_the_batches_in_data_raw_are_refused_naming_both(
    tmp_path: Path, competition_zip: Path
) -> None:
    raw_dir = _raw(tmp_path)
    raw_dir.mkdir(parents=True)
    with zipfile.ZipFile(competition_zip) as bundle:
        bundle.extractall(raw_dir)
        bundle.extractall(raw_dir / "again")
    with pytest.raises(
        PipelineError, match=r"holds 2 cifar-10-batches-py/ folders \(.*again.*\); keep one"
    ):
        fetch.run(DataParams(source="auto"), raw_dir)
    with pytest.raises(PipelineError, match="keep one"):
        prepare.run(PrepareParams(), raw_dir, tmp_path / "prepared", tmp_path / "data.json")


def test_a_linked_batches_folder_in_data_raw_is_read(
    tmp_path: Path, official_sized_cifar: Path, custom_test_file: Path
) -> None:
    raw_dir = _raw(tmp_path)
    raw_dir.mkdir(parents=True)
    (raw_dir / CIFAR_FOLDER).symlink_to(official_sized_cifar / CIFAR_FOLDER)
    shutil.copy(custom_test_file, raw_dir / "cifar_test_nolabel.pkl")
    fetch.run(DataParams(source="auto"), raw_dir)
    prepare.run(PrepareParams(), raw_dir, tmp_path / "prepared", tmp_path / "data.json")


def test_no_data_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(
        PipelineError,
        match=rf"^{tmp_path}/data/input and {tmp_path}/data/raw: no competition files yet; put the "
        rf"competition's zip \(Kaggle → the competition → Data → Download all\) in "
        rf"{tmp_path}/data/input/, or no Kaggle credentials found",
    ):
        fetch.run(DataParams(source="auto"), _raw(tmp_path))


def test_in_a_kaggle_notebook_auto_takes_the_mounted_competition_files_without_credentials(
    tmp_path: Path, competition_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kaggle notebook mounts the competition's zip, unpacked, at /kaggle/input/<slug>/:
    `auto` finds it there (the zip's own nesting, cifar-10-python/cifar-10-batches-py/) before
    asking for credentials a notebook does not have."""
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    kaggle_input = tmp_path / "kaggle/input"
    (kaggle_input / "some-other-dataset").mkdir(parents=True)
    with zipfile.ZipFile(competition_zip) as bundle:
        bundle.extractall(kaggle_input / DataParams().competition)
    monkeypatch.setattr(fetch, "KAGGLE_INPUT", kaggle_input)
    fetch.run(DataParams(source="auto"), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))
    # attached under another name (a dataset copy of the files): found too
    (kaggle_input / DataParams().competition).rename(kaggle_input / "my-copy")
    assert (
        fetch.kaggle_notebook_data(DataParams().competition, kaggle_input)
        == kaggle_input / "my-copy"
    )
    assert fetch.kaggle_notebook_data(DataParams().competition, tmp_path / "nowhere") is None


def test_auto_without_data_or_credentials_explains_every_way(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="auto"), _raw(tmp_path))
    message = str(error.value)
    for hint in (
        "kaggle.json",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "'local'",
        "'synthetic'",
    ):
        assert hint in message
    assert "\n" not in message


def test_kaggle_source_without_credentials_fails_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no Kaggle credentials found"):
        fetch.run(DataParams(source="kaggle"), _raw(tmp_path))


def test_kaggle_source_downloads_the_competition_zip_through_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, competition_zip: Path
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    calls = []

    class FakeKaggleApi:
        def authenticate(self) -> None:
            calls.append("authenticate")

        def competition_download_files(
            self, competition: str, path: str, force: bool, quiet: bool
        ) -> None:
            calls.append(competition)
            target = Path(path) / f"{competition}.zip"
            if len(calls) == 2:  # the first download breaks off half-way
                target.write_bytes(competition_zip.read_bytes()[:1000])
                raise requests.ConnectionError("connection reset by peer")
            assert force  # a retry must not keep the partial file
            shutil.copy(competition_zip, target)

    # `kaggle.api` is an object, not the subpackage: patch the module itself.
    kaggle_module = importlib.import_module("kaggle.api.kaggle_api_extended")
    monkeypatch.setattr(kaggle_module, "KaggleApi", FakeKaggleApi)
    monkeypatch.setattr(kaggle_client, "RETRY_DELAY_SECONDS", 0.01)
    fetch.run(DataParams(source="auto"), _raw(tmp_path))
    competition = "deep-learning-spring-2025-project-1"
    assert calls == ["authenticate", competition, competition]
    _assert_complete(_raw(tmp_path))


def test_kaggle_credentials_file_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "kaggle-config"
    (config_dir / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_client.kaggle_credentials_source() == str(config_dir / "kaggle.json")


# --- the url source against a server on 127.0.0.1 ---------------------------------------------


class _Server:
    """Serves one body; `plan` lists what each request gets: 'ok', 'error' (503), 'truncate',
    'missing' (404), 'reset' (the connection is reset mid-body), 'unsized' (no Content-Length).
    `guard`, when set, must accept a request (its credentials) or it gets 401."""

    def __init__(self, body: bytes, plan: list[str]) -> None:
        self.body, self.plan, self.requests = body, plan, 0
        self.guard: Callable[[http.server.BaseHTTPRequestHandler], bool] | None = None
        self.authorizations: list[str | None] = []  # each request's Authorization header

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                action = server.plan[min(server.requests, len(server.plan) - 1)]
                server.requests += 1
                server.authorizations.append(self.headers.get("Authorization"))
                if server.guard is not None and not server.guard(self):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="cifar"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action in ("error", "missing"):
                    self.send_error(503 if action == "error" else 404)
                    return
                self.send_response(200)
                if action != "unsized":
                    self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if action == "reset":  # SO_LINGER 0: close() sends RST, not FIN
                    self.wfile.write(server.body[:100])
                    self.wfile.flush()
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    return
                body = server.body[: len(server.body) // 2] if action == "truncate" else server.body
                with contextlib.suppress(ConnectionError):  # the client stopped: a refused download
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF_SECONDS", 0.01)
    servers = []

    def start(body: bytes, plan: list[str]) -> tuple[str, _Server]:
        state = _Server(body, plan)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/cifar-10-python.tar.gz", state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def serve_official(monkeypatch: pytest.MonkeyPatch, serve, official_tarball: Path):
    """`serve(body, answers)` of the official-layout tarball, with fetch's md5 check set to its
    md5: `serve_official(answers)` → (url, server)."""
    body = official_tarball.read_bytes()
    monkeypatch.setattr(fetch, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    return lambda answers: serve(body, answers)


def test_url_source_retries_transient_errors_then_verifies_md5(
    tmp_path: Path,
    serve_official,
    custom_test_file: Path,
) -> None:
    url, server = serve_official(["error", "reset", "truncate", "ok"])
    fetch.run(
        DataParams(source="url", cifar_url=url, custom_test_path=str(custom_test_file)),
        _raw(tmp_path),
    )
    assert server.requests == 4
    _assert_complete(_raw(tmp_path))


@pytest.mark.parametrize(
    ("plan", "expected", "requests"),
    [
        (["ok"], "md5 mismatch", sources.DOWNLOAD_ATTEMPTS),
        (["truncate"], "connection closed after", sources.DOWNLOAD_ATTEMPTS),
        (["reset"], "Connection reset", sources.DOWNLOAD_ATTEMPTS),
        (["error"], "HTTP 503", sources.DOWNLOAD_ATTEMPTS),
        (["missing"], "HTTP 404", 1),
    ],
)
def test_url_download_failures_end_in_a_clear_error_and_no_file(
    tmp_path: Path, serve, plan: list[str], expected: str, requests: int
) -> None:
    url, server = serve(b"not the real archive" * 100, plan)
    with pytest.raises(PipelineError, match=expected):
        fetch.run(
            DataParams(source="url", cifar_url=url, custom_test_path="unused.pkl"), _raw(tmp_path)
        )
    assert server.requests == requests
    assert not _raw(tmp_path).exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


# --- secrets in URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@host/c.tar.gz", "https://***@host/c.tar.gz"),
        ("https://ghp_s3cret@host/c.tar.gz", "https://***@host/c.tar.gz"),  # a token as user
        ("https://ghp_s3cret:x-oauth-basic@host/c.tar.gz", "https://***@host/c.tar.gz"),
        # '/', '?' or '#' in a password, which every URL reader takes for the host part's end
        ("https://alice:s3cr/etPW@example.com/c.tar.gz", "https://***@example.com/c.tar.gz"),
        ("https://alice:s3cr?etPW@example.com/c.tar.gz", "https://***@example.com/c.tar.gz"),
        ("https://alice:s3cr#etPW@example.com/c.tar.gz", "https://***@example.com/c.tar.gz"),
        ("https://s3cr/etPW@example.com/c.tar.gz", "https://***@example.com/c.tar.gz"),
        ("https://user@s3cr:et/PW@example.com/c.tar.gz", "https://***@example.com/c.tar.gz"),
        ("https://cdn.example.com/pkg@1.0/c.tar.gz", "https://cdn.example.com/pkg@1.0/c.tar.gz"),
        ("https://host/c\x1b[2J.tar.gz\n", "https://host/c\\x1b[2J.tar.gz"),  # one line, no escapes
        (
            "https://host/c.tar.gz?token=s3cret&X-Amz-Signature=s3cret",
            "https://host/c.tar.gz?token=***&X-Amz-Signature=***",
        ),
        ("https://host/c.tar.gz?s3cret", "https://host/c.tar.gz?***"),
        ("https://host/c.tar.gz#s3cret", "https://host/c.tar.gz#***"),
        ("http://[::1/c.tar.gz?token=s3cret", "(an unparseable URL)"),
        (DataParams().cifar_url, DataParams().cifar_url),  # the official URL is shown whole
    ],
)
def test_redact_url_hides_the_user_info_and_query_values(url: str, shown: str) -> None:
    assert sources.redact_url(url) == shown
    unreadable_or_hidden = shown == "(an unparseable URL)" or sources.REDACTED in shown
    assert sources.url_has_secrets(url) == unreadable_or_hidden  # what is hidden is warned of


def _basic_auth(user: str, password: str) -> Callable[[http.server.BaseHTTPRequestHandler], bool]:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return lambda request: request.headers.get("Authorization") == expected


def _url_params(url: str, custom_test: Path) -> DataParams:
    return DataParams(source="url", cifar_url=url, custom_test_path=str(custom_test))


def _with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@")


def test_a_url_with_user_and_password_downloads_with_basic_auth(
    tmp_path: Path,
    serve_official,
    custom_test_file: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    url, server = serve_official(["ok"])
    server.guard = _basic_auth("user", "s3cret")
    fetch.run(_url_params(_with_userinfo(url, "user:s3cret"), custom_test_file), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))
    assert server.requests == 1  # the credentials go with the first request
    output = capsys.readouterr()
    assert "s3cret" not in output.out + output.err
    assert "dvc.lock keep in plain text" in output.err  # and where to keep them instead


def test_netrc_credentials_are_sent_to_their_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve_official,
    custom_test_file: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    url, server = serve_official(["ok"])
    server.guard = _basic_auth("user", "s3cret")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login user password s3cret\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    fetch.run(_url_params(url, custom_test_file), _raw(tmp_path))
    _assert_complete(_raw(tmp_path))
    assert "warning" not in capsys.readouterr().err  # nothing secret in params.yaml


def test_refused_credentials_are_one_line_without_the_password(
    tmp_path: Path, serve, custom_test_file: Path
) -> None:
    url, server = serve(b"x" * 100, ["ok"])
    server.guard = _basic_auth("user", "right")
    with pytest.raises(PipelineError) as error:
        fetch.run(_url_params(_with_userinfo(url, "user:wrong-s3cret"), custom_test_file),
                  _raw(tmp_path))  # fmt: skip
    message = str(error.value)
    assert message.startswith(f"{_with_userinfo(url, '***')}: download failed: HTTP 401")
    assert "check the credentials" in message
    assert "s3cret" not in message and "\n" not in message
    assert server.requests == 1  # a 401 is not retried
    assert not _raw(tmp_path).exists()


@pytest.mark.parametrize("userinfo", ["alice:s3cr/etPW", "alice:s3cr?etPW", "alice:s3cr#etPW",
                                      "s3cr/etPW"])  # fmt: skip
def test_a_password_holding_a_slash_is_refused_before_connecting_and_never_shown(
    tmp_path: Path, serve, custom_test_file: Path, capsys: pytest.CaptureFixture, userinfo: str
) -> None:
    url, server = serve(b"x" * 100, ["ok"])
    with pytest.raises(PipelineError) as error:
        fetch.run(_url_params(_with_userinfo(url, userinfo), custom_test_file), _raw(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{_with_userinfo(url, '***')}: cannot tell where the host starts")
    assert "percent-encode" in message and "\n" not in message
    output = capsys.readouterr()
    assert "s3cr" not in message + output.out + output.err and "etPW" not in message
    assert server.requests == 0  # nothing sent, to the wrong host or any other
    _no_output(tmp_path)


@pytest.mark.parametrize("tail", ["?token=s3cret x", "?token=s3cret\tx", "/c\x7f?token=s3cret"])
def test_a_url_with_spaces_or_control_characters_is_refused_once_without_its_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve,
    custom_test_file: Path,
    capsys: pytest.CaptureFixture,
    tail: str,
) -> None:
    url, server = serve(b"x" * 100, ["ok"])
    monkeypatch.setenv(fetch.CIFAR_URL_VARIABLE, url + tail)
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="url", custom_test_path=str(custom_test_file)), _raw(tmp_path))
    message = str(error.value)
    assert "cannot hold spaces, control or non-ASCII characters" in message
    assert "\n" not in message and "\t" not in message
    output = capsys.readouterr()
    assert "s3cret" not in message + output.out + output.err
    assert "download attempt" not in output.err and server.requests == 0  # refused, not retried
    _no_output(tmp_path)


@pytest.mark.parametrize(
    ("problem", "attempts", "expected"),
    [
        (http.client.InvalidURL("URL can't contain control characters. '/c?token=s3cret x'"), 1,
         "not a valid URL (the HTTP client refused it)"),
        (http.client.HTTPException("got a line with s3cret"), sources.DOWNLOAD_ATTEMPTS,
         "not a valid HTTP answer (HTTPException)"),
    ],
)  # fmt: skip
def test_the_http_clients_own_words_never_reach_a_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    problem: Exception,
    attempts: int,
    expected: str,
) -> None:
    calls = []

    def stream_to(*args: object) -> None:
        calls.append(args)
        raise problem

    monkeypatch.setattr(sources, "_stream_to", stream_to)
    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF_SECONDS", 0.0)
    with pytest.raises(PipelineError, match=re.escape(expected)) as error:
        sources.download_file("http://127.0.0.1:9/c.tar.gz?token=s3cret", tmp_path / "c", None)
    assert len(calls) == attempts  # an invalid URL stays invalid: it is not retried
    output = capsys.readouterr()
    assert "s3cret" not in str(error.value) + output.out + output.err


def test_a_token_in_the_query_is_never_printed(
    tmp_path: Path, serve, custom_test_file: Path, capsys: pytest.CaptureFixture
) -> None:
    url, server = serve(b"x" * 100, ["error", "missing"])
    with pytest.raises(PipelineError) as error:
        fetch.run(_url_params(f"{url}?token=s3cret&dl=1", custom_test_file), _raw(tmp_path))
    assert str(error.value).startswith(f"{url}?token=***&dl=***: download failed: HTTP 404")
    output = capsys.readouterr()
    assert "download attempt 1 failed" in output.err  # the retry line and progress bar: no token
    assert "s3cret" not in output.out + output.err + str(error.value)


def test_the_url_variable_keeps_a_token_out_of_params_and_dvc_lock(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve_official,
    custom_test_file: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    url, server = serve_official(["ok"])
    server.guard = lambda request: request.path.endswith("?token=s3cret")
    monkeypatch.setenv(fetch.CIFAR_URL_VARIABLE, f"{url}?token=s3cret")
    params = DataParams(source="url", custom_test_path=str(custom_test_file))  # official URL
    fetch.run(params, _raw(tmp_path))
    _assert_complete(_raw(tmp_path))
    err = capsys.readouterr().err
    assert f"${fetch.CIFAR_URL_VARIABLE} ({url}?token=***)" in err
    assert "s3cret" not in err and "warning" not in err


def test_a_malformed_netrc_is_named_without_its_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve, custom_test_file: Path
) -> None:
    url, _ = serve(b"x", ["ok"])
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login user passwrd s3cret\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    with pytest.raises(PipelineError, match=r"netrc, line 1: not a valid netrc file$") as error:
        fetch.run(_url_params(url, custom_test_file), _raw(tmp_path))
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize("action", ["ok", "unsized"])  # a Content-Length, or none: counted
def test_a_download_bigger_than_any_cifar_archive_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve, custom_test_file: Path, action: str
) -> None:
    monkeypatch.setattr(sources, "MAX_DOWNLOAD_BYTES", 3 << 20)
    url, server = serve(bytes(5 << 20), [action])
    with pytest.raises(PipelineError, match="refused a download of .* more than the 3 MiB"):
        fetch.run(_url_params(url, custom_test_file), _raw(tmp_path))
    assert server.requests == 1
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


# --- archive sizes and files that are not archives --------------------------------------------


def _no_output(tmp_path: Path) -> None:
    assert not _raw(tmp_path).exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle,
        bundle.open("cifar_test_nolabel.pkl", "w", force_zip64=True) as member,
    ):
        for _ in range(200):  # 200 MiB of zeros
            member.write(bytes(1 << 20))
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(
        PipelineError,
        match=r"bomb.zip: refused member 'cifar_test_nolabel.pkl': it unpacks to more than 128 MiB",
    ):
        fetch.run(DataParams(source="local", path=str(archive)), _raw(tmp_path))
    _no_output(tmp_path)


def test_a_tar_member_over_the_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 1 << 20)
    info = tarfile.TarInfo(f"{CIFAR_FOLDER}/data_batch_1")
    archive = _tar_with(tmp_path, info, bytes(2 << 20))
    with pytest.raises(PipelineError, match=r"bundle.tar.gz: refused member 'cifar-10-batches-py/"):
        fetch.run(DataParams(source="local", path=str(archive), custom_test_path="x"),
                  _raw(tmp_path))  # fmt: skip
    _no_output(tmp_path)


def test_all_members_together_are_capped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 3 << 20)
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for batch in range(4):  # each under the member cap, 4 MiB together
            bundle.writestr(f"{CIFAR_FOLDER}/data_batch_{batch + 1}", bytes(1 << 20))
    with pytest.raises(PipelineError, match="bundle.zip: unpacks to 4,194,304 bytes, more than"):
        fetch.run(DataParams(source="local", path=str(archive)), _raw(tmp_path))
    _no_output(tmp_path)


def test_unpacking_counts_the_bytes_whatever_the_header_declared(tmp_path: Path) -> None:
    sink = io.BytesIO()
    with pytest.raises(PipelineError, match=r"bundle.zip: refused member 'data_batch_1'"):
        archives._copy_capped(
            Path("bundle.zip"), "data_batch_1", io.BytesIO(bytes(3 << 20)), sink, 2 << 20,
            archives.ZIP_READ_ERRORS, archives._unreadable_zip,
        )  # fmt: skip
    assert sink.tell() <= 2 << 20


def test_a_fifo_named_like_the_tarball_is_refused_without_opening_it(
    tmp_path: Path, custom_test_file: Path
) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    os.mkfifo(folder / "cifar-10-python.tar.gz")  # opening it would wait for a writer forever
    shutil.copy(custom_test_file, folder)
    with pytest.raises(PipelineError, match=r"cifar-10-python.tar.gz: not a regular file"):
        fetch.run(DataParams(source="local", path=str(folder)), _raw(tmp_path))


# --- a linked data/raw ------------------------------------------------------------------------


def _linked_raw(tmp_path: Path) -> tuple[Path, Path]:
    shared = tmp_path / "shared" / "cifar"
    shared.mkdir(parents=True)
    raw_dir = _raw(tmp_path)
    raw_dir.parent.mkdir(parents=True)
    raw_dir.symlink_to(shared)
    return raw_dir, shared


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_link_to_an_empty_folder_is_filled_in_place_and_kept(tmp_path: Path) -> None:
    raw_dir, shared = _linked_raw(tmp_path)
    inode = shared.stat().st_ino
    params = DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC)
    fetch.run(params, raw_dir)
    assert raw_dir.is_symlink() and raw_dir.resolve() == shared.resolve()
    assert shared.stat().st_ino == inode  # filled, never renamed or replaced
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [CIFAR_FOLDER, "cifar_test_nolabel.pkl", FETCH_RECORD]
    )
    assert sorted(p.name for p in (shared / CIFAR_FOLDER).iterdir()) == sorted(CIFAR_FILES)
    stamp = (shared / CIFAR_FOLDER / "data_batch_1").stat().st_mtime_ns
    fetch.run(params, raw_dir)  # the same files again: the shared folder is left as it is
    assert (shared / CIFAR_FOLDER / "data_batch_1").stat().st_mtime_ns == stamp
    assert raw_dir.is_symlink()
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]
    assert [p.name for p in shared.parent.iterdir()] == ["cifar"]


def test_a_linked_folder_holding_other_files_is_never_overwritten(tmp_path: Path) -> None:
    raw_dir, shared = _linked_raw(tmp_path)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    before = _contents(shared)
    other = DataParams(source="synthetic", synthetic=dataclasses.replace(SMALL_SYNTHETIC, seed=4))
    with pytest.raises(PipelineError, match="fetch never overwrites a linked folder") as error:
        fetch.run(other, raw_dir)
    assert "\n" not in str(error.value)
    assert _contents(shared) == before
    assert raw_dir.is_symlink()
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]


USERS_NAMES = [
    ".cifar.old",
    ".cifar.backup.tmp",
    ".cifar.pipeline.old",
    ".cifar.pipeline-0123abcd.tmp",
]


@pytest.mark.parametrize("target_exists", [True, False])
def test_nothing_beside_a_links_target_is_ever_renamed_or_removed(
    tmp_path: Path, target_exists: bool
) -> None:
    """The folder holding a link's target is the user's: even names like ours are theirs there."""
    raw_dir, shared = _linked_raw(tmp_path)
    (shared / "their-file").write_text("theirs")
    if not target_exists:  # a dangling link beside a `.cifar.old`: never renamed into place
        shutil.rmtree(shared)
    for name in USERS_NAMES:
        (shared.parent / name).mkdir()
        (shared.parent / name / "their-file").write_text("theirs")
    before = _contents(shared.parent)
    expected = "never overwrites a linked folder" if target_exists else "which is not a folder"
    with pytest.raises(PipelineError, match=expected) as error:
        fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    assert "\n" not in str(error.value)
    assert _contents(shared.parent) == before
    assert sorted(p.name for p in shared.parent.iterdir()) == sorted(
        USERS_NAMES + (["cifar"] if target_exists else [])
    )


@pytest.mark.parametrize("target", ["root", "home", "parent"])
def test_a_link_to_the_root_the_home_folder_or_its_own_folder_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    raw_dir = _raw(tmp_path)
    raw_dir.parent.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    linked = {"root": Path("/"), "home": home, "parent": raw_dir.parent}[target]
    raw_dir.symlink_to(linked)
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    message = str(error.value)
    assert message.startswith(f"{raw_dir}: a link to {os.path.realpath(linked)}, "), message
    assert "an output needs a folder of its own" in message and "\n" not in message
    assert list(home.iterdir()) == [] and raw_dir.is_symlink()


# --- a mount point, or a link to a freshly mounted disk ---------------------------------------


def _mounted(monkeypatch: pytest.MonkeyPatch, mount_point: Path) -> None:
    """Make `mount_point` look mounted: os.path.ismount says so, and renaming it is EBUSY."""
    real_ismount, real_replace, real_rename = os.path.ismount, os.replace, os.rename
    mount_point.mkdir(parents=True, exist_ok=True)
    (mount_point / "lost+found").mkdir(exist_ok=True)  # what a fresh ext4 disk holds
    is_it = lambda path: os.path.abspath(path) == str(mount_point)  # noqa: E731

    def busy(real: Callable) -> Callable:
        def call(source: object, target: object, *args: object, **kwargs: object) -> None:
            if is_it(source) or is_it(target):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(source))
            real(source, target, *args, **kwargs)

        return call

    monkeypatch.setattr(os.path, "ismount", lambda path: is_it(path) or real_ismount(path))
    monkeypatch.setattr(os, "replace", busy(real_replace))
    monkeypatch.setattr(os, "rename", busy(real_rename))


def test_a_mount_point_data_raw_is_filled_in_place_and_never_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw_dir = _raw(tmp_path)
    _mounted(monkeypatch, raw_dir)
    inode = raw_dir.stat().st_ino
    for seed in (1, 2):  # filled, then its contents replaced
        synthetic = dataclasses.replace(SMALL_SYNTHETIC, seed=seed)
        fetch.run(DataParams(source="synthetic", synthetic=synthetic), raw_dir)
    fetch.run(DataParams(source="synthetic", synthetic=synthetic), tmp_path / "expected")
    assert raw_dir.stat().st_ino == inode
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(
        [CIFAR_FOLDER, "cifar_test_nolabel.pkl", FETCH_RECORD, "lost+found"]
    )
    assert _contents(raw_dir) == _contents(tmp_path / "expected")
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]


def test_a_link_to_a_freshly_mounted_disk_is_filled_in_place_beside_its_lost_and_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw_dir, shared = _linked_raw(tmp_path)
    _mounted(monkeypatch, shared)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [CIFAR_FOLDER, "cifar_test_nolabel.pkl", FETCH_RECORD, "lost+found"]
    )
    assert raw_dir.is_symlink() and [p.name for p in shared.parent.iterdir()] == ["cifar"]


def test_a_mount_points_temporary_folder_is_made_inside_it_on_its_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "data" / "prepared"
    _mounted(monkeypatch, final)
    (final / "train.npz").write_text("earlier")
    with atomic_directory(final) as temp:
        assert temp.parent == final
        (temp / "val.npz").write_text("later")
    assert sorted(p.name for p in final.iterdir()) == ["lost+found", "val.npz"]


@pytest.mark.parametrize("failing", ["moving out", "moving in"])
def test_a_fill_in_place_that_fails_midway_keeps_the_old_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    raw_dir = _raw(tmp_path)
    _mounted(monkeypatch, raw_dir)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    before = _contents(raw_dir)
    mounted_replace, moves = os.replace, []

    def replace(source: object, target: object) -> None:
        step = "moving out" if Path(target).parent.name == ".pipeline.old" else "moving in"
        moves.append(step)
        if step == failing and moves.count(step) == 2:  # the first entry has moved already
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        mounted_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    other = DataParams(source="synthetic", synthetic=dataclasses.replace(SMALL_SYNTHETIC, seed=4))
    with pytest.raises(PipelineError) as error:
        fetch.run(other, raw_dir)
    _one_disk_line(error, raw_dir, errno.EACCES)
    assert _contents(raw_dir) == before
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(
        [CIFAR_FOLDER, "cifar_test_nolabel.pkl", FETCH_RECORD, "lost+found"]
    )


@pytest.mark.parametrize("killed", ["moving out", "moving in"])
def test_a_fill_in_place_killed_midway_is_undone_or_finished_by_the_next_run(
    tmp_path: Path, killed: str
) -> None:
    """The two states a kill can leave inside a linked folder: before the temporary folder is
    marked whole, the old contents go back; after, the rest of the new ones move in."""
    raw_dir, shared = _linked_raw(tmp_path)
    aside, temp = shared / ".pipeline.old", shared / ".pipeline-0123abcd.tmp"
    aside.mkdir()
    temp.mkdir()
    (aside / "a.npz").write_text("old a")
    (temp / "b.npz").write_text("new b")
    if killed == "moving out":  # a.npz is aside, b.npz not yet
        (shared / "b.npz").write_text("old b")
        (temp / "a.npz").write_text("new a")
    else:  # all old ones aside, the temporary folder marked whole, a.npz moved in
        (aside / "b.npz").write_text("old b")
        (temp / ".pipeline-complete").touch()
        (shared / "a.npz").write_text("new a")
    recover_directory(raw_dir)
    age = "old" if killed == "moving out" else "new"
    assert _contents(shared) == {"a.npz": f"{age} a".encode(), "b.npz": f"{age} b".encode()}
    assert sorted(p.name for p in shared.iterdir()) == ["a.npz", "b.npz"]


# --- killed fetches: the swap's crash window and the debris -----------------------------------

KILLED_BETWEEN_THE_RENAMES = """
import os, signal, sys
from pathlib import Path
from pipeline.config.params import DataParams, SyntheticParams
from pipeline.stages import fetch

real_replace = os.replace
def replace(source, target):
    if Path(source).name.startswith(".raw.") and Path(target).name == "raw":  # the second rename
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)
os.replace = replace
synthetic = SyntheticParams(train_images=200, val_images=50, custom_test_images=40, seed=4)
fetch.run(DataParams(source="synthetic", synthetic=synthetic), Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_fetch_killed_between_the_two_renames_is_undone_by_the_next(
    tmp_path: Path, official_sized_cifar: Path, custom_test_file: Path
) -> None:
    raw_dir = _raw(tmp_path)
    folder = tmp_path / "download"
    shutil.copytree(official_sized_cifar, folder)
    shutil.copy(custom_test_file, folder / "cifar_test_nolabel.pkl")
    fetch.run(DataParams(source="local", path=str(folder)), raw_dir)
    before = _contents(raw_dir)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_THE_RENAMES, str(raw_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert not raw_dir.exists() and (raw_dir.parent / ".raw.pipeline.old").is_dir()
    assert list(raw_dir.parent.glob(".raw.pipeline-*.tmp"))
    assert list(raw_dir.parent.glob(".fetch-pipeline-*"))

    fetch.run(DataParams(source="auto"), raw_dir)  # finds the earlier data back, fetches nothing
    assert _contents(raw_dir) == before
    _assert_complete(raw_dir)


def test_debris_of_killed_fetches_is_removed_and_nothing_else(tmp_path: Path) -> None:
    params = DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC)
    fetch.run(params, _raw(tmp_path))
    data = _raw(tmp_path).parent
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data_batch_1").write_bytes(b"someone else's")
    ours = [data / ".fetch-pipeline-k1ll3d00", data / ".raw.pipeline-0123abcd.tmp",
            data / ".raw.pipeline.old"]  # fmt: skip
    for folder in ours[:2]:
        folder.mkdir()
        (folder / "data_batch_1").write_bytes(bytes(1000))
    ours[2].symlink_to(shared)  # where an earlier fetch moved a linked data/raw
    theirs = [data / "notes.txt", data / ".raw-backup", data / ".prepared.pipeline-0123abcd.tmp",
              data / ".raw.old", data / ".raw.backup.tmp", data / ".fetch-cache"]  # fmt: skip
    for path in theirs:
        path.write_text("not fetch's")
    fetch.run(params, _raw(tmp_path))
    assert not [path for path in ours if os.path.lexists(path)]
    assert all(path.exists() for path in theirs)
    assert (shared / "data_batch_1").read_bytes() == b"someone else's"  # unlinked, not followed


def test_a_users_own_dot_raw_old_is_never_put_in_place_or_removed(tmp_path: Path) -> None:
    """Only `.raw.pipeline.old` is fetch's to put back: `.raw.old` is a name a user might pick."""
    data = _raw(tmp_path).parent
    theirs = [data / ".raw.old", data / ".raw.backup.tmp", data / ".raw.0123abcd.tmp"]
    for folder in theirs:
        folder.mkdir(parents=True)
        (folder / "data_batch_1").write_text("their own")
    before = _contents(data)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), _raw(tmp_path))
    assert sorted(p.name for p in (_raw(tmp_path) / CIFAR_FOLDER).iterdir()) == sorted(CIFAR_FILES)
    assert {k: v for k, v in _contents(data).items() if not k.startswith("raw/")} == before


def test_an_interrupted_swap_is_undone_before_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "data" / "prepared"
    with atomic_directory(final) as temp:
        (temp / "train.npz").write_text("earlier")
    real_replace, renames = os.replace, []

    def replace(source: object, target: object) -> None:
        renames.append(source)
        if len(renames) == 2:  # between final → .prepared.old and temporary → final
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_directory(final) as temp:
        (temp / "train.npz").write_text("later")
    monkeypatch.undo()
    assert not final.exists()
    recover_directory(final)
    assert (final / "train.npz").read_text() == "earlier"
    assert [p.name for p in final.parent.iterdir()] == ["prepared"]


def test_a_second_writer_is_refused_while_the_folder_is_locked(tmp_path: Path) -> None:
    data = _raw(tmp_path).parent
    data.mkdir(parents=True)
    other = os.open(data, os.O_RDONLY)  # another process's lock, as fetch takes it
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(PipelineError, match="another pipeline process is writing here"):
            fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), _raw(tmp_path))
    finally:
        os.close(other)
    assert not _raw(tmp_path).exists()


# --- a full or read-only disk -----------------------------------------------------------------


def _refusing(code: int, *, where: Callable[[str], bool], real: Callable) -> Callable:
    def call(path: object, *args: object, **kwargs: object) -> object:
        if where(str(path)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    return call


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile:
    """A file opened for writing on a full disk: every write fails."""

    def __init__(self, handle: io.IOBase) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        _disk_full()

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _full_disk_for(monkeypatch: pytest.MonkeyPatch, chosen: Callable[[Path], bool]) -> None:
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = real_open(self, mode, *args, **kwargs)
        return _FullDiskFile(handle) if "w" in mode and chosen(self) else handle

    monkeypatch.setattr(Path, "open", open_)


def _one_disk_line(error: pytest.ExceptionInfo, output: Path, code: int) -> None:
    message = str(error.value)
    assert message.startswith(f"{output}: could not write it ({os.strerror(code)}; "), message
    assert "nothing there was changed" in message and "\n" not in message


@pytest.mark.parametrize(
    ("code", "failing"),
    [
        (errno.ENOSPC, "copy"),  # the disk fills while the files are copied in
        (errno.EROFS, "folder"),  # the disk is read-only: no temporary folder
        (errno.EACCES, "folder"),  # data/ belongs to someone else
    ],
)
def test_a_full_or_read_only_disk_during_fetch_is_one_line_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, failing: str
) -> None:
    raw_dir = _raw(tmp_path)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    before = _contents(raw_dir)
    source = tmp_path / "download"
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), source)
    if failing == "copy":
        monkeypatch.setattr(shutil, "copyfile", _disk_full)
    else:
        inside_data = lambda path: Path(path).parent == raw_dir.parent  # noqa: E731
        monkeypatch.setattr(os, "mkdir", _refusing(code, where=inside_data, real=os.mkdir))
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="local", path=str(source)), raw_dir)
    _one_disk_line(error, raw_dir, code)
    assert _contents(raw_dir) == before
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV])
def test_a_busy_or_cross_disk_rename_is_one_line_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A bind-mounted data/raw (which os.path.ismount cannot see) refuses its rename: EBUSY."""
    raw_dir = _raw(tmp_path)
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    before = _contents(raw_dir)
    is_raw = lambda path: os.path.abspath(path) == str(raw_dir)  # noqa: E731
    monkeypatch.setattr(os, "replace", _refusing(code, where=is_raw, real=os.replace))
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    _one_disk_line(error, raw_dir, code)
    assert _contents(raw_dir) == before
    assert [p.name for p in raw_dir.parent.iterdir()] == ["raw"]


def test_a_full_disk_while_downloading_is_one_line_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve, custom_test_file: Path
) -> None:
    url, server = serve(b"x" * 5000, ["ok"])
    _full_disk_for(monkeypatch, lambda path: path.name.startswith(".cifar-10-python.tar.gz."))
    with pytest.raises(PipelineError) as error:
        fetch.run(_url_params(url, custom_test_file), _raw(tmp_path))
    _one_disk_line(error, _raw(tmp_path), errno.ENOSPC)
    assert server.requests == 1  # the network was fine: no retry
    _no_output(tmp_path)


def test_a_full_disk_while_unpacking_is_a_disk_problem_not_a_corrupt_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _zip_with(tmp_path, f"{CIFAR_FOLDER}/batches.meta", b"x" * 1000)
    _full_disk_for(monkeypatch, lambda path: "extracted" in path.parts)
    with pytest.raises(PipelineError) as error:
        fetch.run(DataParams(source="local", path=str(archive)), _raw(tmp_path))
    _one_disk_line(error, _raw(tmp_path), errno.ENOSPC)
    assert "corrupt" not in str(error.value)
    _no_output(tmp_path)


@pytest.mark.parametrize("failing", ["arrays", "report"])
def test_a_full_or_read_only_disk_during_prepare_keeps_the_earlier_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    raw_dir, prepared_dir = _raw(tmp_path), tmp_path / "data" / "prepared"
    report_path = tmp_path / "metrics" / "data.json"
    fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), raw_dir)
    prepare.run(PrepareParams(), raw_dir, prepared_dir, report_path)
    report_path.write_text("{}")  # so a rewritten report would show
    before = _contents(prepared_dir), report_path.read_bytes()
    if failing == "arrays":  # the disk fills while val.npz is written
        real_savez = np.savez

        def savez(file: object, **arrays: np.ndarray) -> None:
            if Path(str(file)).name == "val.npz":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_savez(file, **arrays)

        monkeypatch.setattr(np, "savez", savez)
        output, code = prepared_dir, errno.ENOSPC
    else:  # metrics/ is read-only
        in_metrics = lambda path: Path(path).parent == report_path.parent  # noqa: E731
        monkeypatch.setattr(os, "open", _refusing(errno.EROFS, where=in_metrics, real=os.open))
        output, code = report_path, errno.EROFS
    with pytest.raises(PipelineError) as error:
        prepare.run(PrepareParams(), raw_dir, prepared_dir, report_path)
    monkeypatch.undo()
    _one_disk_line(error, output, code)
    assert (_contents(prepared_dir), report_path.read_bytes()) == before
    assert sorted(p.name for p in prepared_dir.parent.iterdir()) == ["prepared", "raw"]
    assert [p.name for p in report_path.parent.iterdir()] == ["data.json"]


# --- the umask, and the modes and links of rewritten files ------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_modes_the_umask_gives(tmp_path: Path, umask: int) -> None:
    earlier = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "note.txt", "x")
        with atomic_directory(tmp_path / "folder") as temp:
            (temp / "inside.txt").write_text("y")
        fetch.run(DataParams(source="synthetic", synthetic=SMALL_SYNTHETIC), _raw(tmp_path))
    finally:
        os.umask(earlier)
    files = [tmp_path / "note.txt", _raw(tmp_path) / CIFAR_FOLDER / "data_batch_1"]
    folders = [tmp_path / "folder", _raw(tmp_path), _raw(tmp_path) / CIFAR_FOLDER]
    assert [oct(_mode(path)) for path in files] == [oct(0o666 & ~umask)] * len(files)
    assert [oct(_mode(path)) for path in folders] == [oct(0o777 & ~umask)] * len(folders)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664], ids=oct)
def test_a_rewritten_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    """`chmod 600 params.yaml` then `python -m pipeline profile cpu`: still 600."""
    path = tmp_path / "params.yaml"
    path.write_text("earlier")
    path.chmod(mode)
    write_text_atomic(path, "later")
    assert (path.read_text(), oct(_mode(path))) == ("later", oct(mode))


def test_a_symlinked_output_is_replaced_and_what_it_pointed_to_is_untouched(
    tmp_path: Path,
) -> None:
    """DVC's symlink cache type makes outputs links into the cache: writing through one would
    change a cached file under its md5's name."""
    cached = tmp_path / "cache" / "files" / "md5" / "ab" / "cdef"
    cached.parent.mkdir(parents=True)
    cached.write_text("earlier")
    cached.chmod(0o444)
    link = tmp_path / "project" / "best.pt"
    link.parent.mkdir()
    link.symlink_to(cached)
    write_text_atomic(link, "later")
    assert not link.is_symlink() and link.read_text() == "later" and _mode(link) != 0o444
    assert cached.read_text() == "earlier" and _mode(cached) == 0o444
