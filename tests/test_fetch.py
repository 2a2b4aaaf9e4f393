"""fetch: every source, archive safety, downloads against a loopback server, atomic landing."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import io
import shutil
import socket
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import SMALL_SYNTHETIC, write_small_custom_test

from pipeline.config.params import DataParams
from pipeline.data import sources
from pipeline.data.formats import CIFAR_FILES, CIFAR_FOLDER
from pipeline.errors import PipelineError
from pipeline.integrations import kaggle_client
from pipeline.stages import fetch


@pytest.fixture(autouse=True)
def no_kaggle_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))


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
        PipelineError, match="expected 10000 images.*left over from the synthetic demo"
    ):
        fetch.run(DataParams(source="auto"), raw_dir)


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
    'missing' (404), 'reset' (the connection is reset mid-body)."""

    def __init__(self, body: bytes, plan: list[str]) -> None:
        self.body, self.plan, self.requests = body, plan, 0

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                action = server.plan[min(server.requests, len(server.plan) - 1)]
                server.requests += 1
                if action in ("error", "missing"):
                    self.send_error(503 if action == "error" else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if action == "reset":  # SO_LINGER 0: close() sends RST, not FIN
                    self.wfile.write(server.body[:100])
                    self.wfile.flush()
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    return
                self.wfile.write(
                    server.body if action == "ok" else server.body[: len(server.body) // 2]
                )

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


def test_url_source_retries_transient_errors_then_verifies_md5(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve,
    official_tarball: Path,
    custom_test_file: Path,
) -> None:
    body = official_tarball.read_bytes()
    monkeypatch.setattr(fetch, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    url, server = serve(body, ["error", "reset", "truncate", "ok"])
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
