"""Stage 1, fetch → data/raw/: the CIFAR-10 python batches and the custom test pickle.

`data.source` picks where they come from (kaggle, url, local, synthetic, or auto). Whatever the
source, the files are assembled in a temporary folder, checked by structure through the same
restricted loaders `prepare` uses, and only then swapped into `data/raw` (folders.atomic_directory).
Each fetch first undoes what a killed one left: a `data/raw` moved aside mid-swap is put back,
and its temporary folders (`data/.fetch-pipeline-*`, `data/.raw.pipeline-*.tmp`) are removed;
names a user might give their own folders (`.raw.old`, `.fetch-cache`) are never touched.

Your own copy of the files goes in `data/input/` (the competition's zip as downloaded, or its
files unpacked, at any depth): it is yours, never a DVC output, so no `dvc exp run` or
`dvc checkout` ever removes it; `auto` copies it into `data/raw`. Files a user put in `data/raw`
itself are used where they are and never replaced: fetch keeps a record of what it wrote there
(`fetch_record.json`: each entry's size and md5) and replaces only a `data/raw` that holds
exactly that.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.config.params import DataParams
from pipeline.data.archives import extract_archive
from pipeline.data.formats import (
    CIFAR_FILES,
    CIFAR_FOLDER,
    CUSTOM_TEST_NAMES,
    META_NAME,
    find_batches_dir,
    find_custom_test,
    find_raw_files,
    load_cifar_batch,
    load_class_names,
    load_custom_test,
)
from pipeline.data.locate import (
    archives_in,
    input_files,
    input_folder,
    locate_files,
    raw_files_present,
)
from pipeline.data.sources import download_file, redact_url, url_has_secrets
from pipeline.data.synthetic import write_synthetic_raw
from pipeline.errors import PipelineError
from pipeline.files import disk_errors_reported, folder_lock
from pipeline.folders import atomic_directory, recover_directory, remove_debris
from pipeline.integrations.kaggle_client import (
    CREDENTIALS_HELP,
    call,
    connect,
    kaggle_credentials_source,
)
from pipeline.integrations.repository import in_experiment_copy
from pipeline.paths import RAW_DIR
from pipeline.records.fetch_record import (
    fetched_source,
    linked_folder_in_use,
    refuse_to_replace_user_files,
    require_same_files,
    user_entries,
    write_fetch_record,
)
from pipeline.reporting import console, warn

CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the official cifar-10-python.tar.gz
CIFAR_URL_VARIABLE = "PIPELINE_CIFAR_URL"  # replaces data.cifar_url: a secret URL stays untracked
SCRATCH_PREFIX = ".fetch-pipeline-"  # fetch's scratch beside data/raw, removed after a kill too
OFFICIAL_IMAGES_PER_BATCH = 10_000
KAGGLE_INPUT = Path("/kaggle/input")  # where a Kaggle notebook mounts a competition's files
OFFLINE_ALTERNATIVES = (
    "offline: set data.source to 'local' with data.path pointing to the competition's .zip, a "
    "CIFAR-10 .tar.gz or a folder, or to 'synthetic' for the demo"
)


# --- credentials and the Kaggle source --------------------------------------------------------


def missing_credentials_message() -> str:
    return f"no Kaggle credentials found: {CREDENTIALS_HELP}; {OFFLINE_ALTERNATIVES}"


def download_from_kaggle(competition: str, download_dir: Path) -> Path:
    """Download the competition's zip with the kaggle client; return its path."""
    if kaggle_credentials_source() is None:
        raise PipelineError(missing_credentials_message())
    api = connect("fetch")
    try:  # retried like every Kaggle call; force: a retry never trusts a partial download
        call(
            lambda: api.competition_download_files(
                competition, path=str(download_dir), force=True, quiet=False
            ),
            f"downloading competition '{competition}'",
        )
    except PipelineError as error:
        raise PipelineError(
            f"{error}; have you accepted its rules at https://www.kaggle.com/c/{competition}/rules?"
        ) from None
    archives = sorted(download_dir.glob("*.zip"))
    if not archives:
        raise PipelineError(f"kaggle: competition '{competition}' download produced no .zip")
    return archives[0]


def cifar_url(params: DataParams) -> str:
    """The CIFAR-10 URL: `$PIPELINE_CIFAR_URL` when set, else `data.cifar_url`.

    A URL holding a secret (a signed link, `?token=`, `user:password@`) belongs in the variable:
    params.yaml is committed and dvc.lock copies every param. Where the archive comes from cannot
    change a run: it must match the official md5 whatever the URL.
    """
    override = os.environ.get(CIFAR_URL_VARIABLE, "").strip()
    if override:
        console.print(f"fetch: CIFAR-10 from ${CIFAR_URL_VARIABLE} ({redact_url(override)})")
        return override
    return params.cifar_url


def warn_of_secrets_in_params(params: DataParams) -> None:
    """After a download (an error stays one line): say where a URL's secret is better kept."""
    if not os.environ.get(CIFAR_URL_VARIABLE, "").strip() and url_has_secrets(params.cifar_url):
        warn(
            "data.cifar_url holds user info or query values, which params.yaml "
            "and dvc.lock keep in plain text; put credentials in ~/.netrc, or the whole URL in "
            f"${CIFAR_URL_VARIABLE}"
        )


# --- assembling and checking data/raw ---------------------------------------------------------


def check_raw(raw_dir: Path, official_counts: bool) -> int:
    """Load every file through the restricted loaders; return the custom test's image count."""
    batches_dir, custom_test = find_raw_files(raw_dir)
    if batches_dir is None:
        raise PipelineError(f"{raw_dir}: no {CIFAR_FOLDER}/ folder (with {META_NAME}) inside")
    for name in CIFAR_FILES:
        if not (batches_dir / name).is_file():
            raise PipelineError(
                f"{batches_dir / name}: missing (expected the official CIFAR-10 files {list(CIFAR_FILES)})"
            )
    load_class_names(batches_dir / META_NAME)
    for name in CIFAR_FILES[:-1]:
        images, _ = load_cifar_batch(batches_dir / name)
        if official_counts and images.shape[0] != OFFICIAL_IMAGES_PER_BATCH:
            raise PipelineError(
                f"{batches_dir / name}: expected {OFFICIAL_IMAGES_PER_BATCH} images as in the "
                f"official archive, found {images.shape[0]}"
            )
    if custom_test is None:
        raise PipelineError(f"{raw_dir}: no custom test pickle ({' or '.join(CUSTOM_TEST_NAMES)})")
    return load_custom_test(custom_test)[0].shape[0]


def _assemble(
    raw_tmp: Path,
    batches_dir: Path | None,
    custom_test: Path | None,
    origin: str,
    params: DataParams,
) -> None:
    if batches_dir is None:
        raise PipelineError(f"{origin}: no {CIFAR_FOLDER}/ folder with {META_NAME} inside")
    if custom_test is None:
        if not params.custom_test_path:
            raise PipelineError(
                f"{origin}: holds CIFAR-10 but no custom test pickle; set data.custom_test_path "
                f"to your {CUSTOM_TEST_NAMES[0]}"
            )
        custom_test = Path(params.custom_test_path)
        if not custom_test.is_file():
            raise PipelineError(f"{custom_test}: data.custom_test_path points to no file")
    (raw_tmp / CIFAR_FOLDER).mkdir()
    for name in CIFAR_FILES:
        if not (batches_dir / name).is_file():
            raise PipelineError(f"{origin}: {CIFAR_FOLDER}/{name} is missing")
        shutil.copyfile(batches_dir / name, raw_tmp / CIFAR_FOLDER / name)
    custom_name = (
        custom_test.name if custom_test.name in CUSTOM_TEST_NAMES else CUSTOM_TEST_NAMES[0]
    )
    shutil.copyfile(custom_test, raw_tmp / custom_name)


def _fetch_into(raw_tmp: Path, source: str, params: DataParams, scratch: Path) -> None:
    if source == "synthetic":
        write_synthetic_raw(raw_tmp, params.synthetic)
        return
    if source == "kaggle":
        archive = download_from_kaggle(params.competition, scratch)
        origin = f"kaggle competition '{params.competition}'"
    elif source == "url":
        url = cifar_url(params)
        archive = scratch / "cifar-10-python.tar.gz"
        download_file(url, archive, CIFAR10_MD5)
        origin = redact_url(url)
    else:  # local
        if not params.path:
            raise PipelineError(
                "params: data.path is empty; data.source 'local' needs a folder, .zip or .tar.gz"
            )
        archive = Path(params.path)
        origin = str(archive)
        if not archive.exists():
            raise PipelineError(f"{archive}: data.path does not exist")
    if archive.is_dir():
        batches_dir, custom_test = locate_files(archive, scratch, user_folder=True)
    else:
        extracted = scratch / "extracted"
        extracted.mkdir()
        extract_archive(archive, extracted)
        batches_dir, custom_test = locate_files(extracted, scratch)
    _assemble(raw_tmp, batches_dir, custom_test, origin, params)


def kaggle_notebook_data(competition: str, input_dir: Path | None = None) -> Path | None:
    """The folder a Kaggle notebook mounted the competition's files in (`/kaggle/input/<slug>`,
    or any input folder holding the batches and the custom test pickle), or None elsewhere."""
    input_dir = KAGGLE_INPUT if input_dir is None else input_dir
    if not input_dir.is_dir():
        return None
    named = [input_dir / competition, input_dir / "competitions" / competition]
    others = sorted(entry for entry in input_dir.iterdir() if entry.is_dir() and entry not in named)
    for folder in [*named, *others]:
        if folder.is_dir() and find_batches_dir(folder) and find_custom_test(folder):
            return folder
    return None


def no_data_message(raw_dir: Path, problem: str | None) -> str:
    input_dir = input_folder(raw_dir)
    where = f"{problem}; " if problem else f"{input_dir} and {raw_dir}: no competition files yet; "
    if in_experiment_copy():
        return where + (
            "`dvc exp run --temp` and `--queue` copy only committed files: run `dvc repro` "
            "once in the workspace first (its data/raw is then cached and copied)"
        )
    return where + (
        f"put the competition's zip (Kaggle → the competition → Data → Download all) in "
        f"{input_dir}/, or " + missing_credentials_message()
    )


def _chosen_source(params: DataParams, raw_dir: Path) -> tuple[str, DataParams] | None:
    """The source to fetch from, with the params it reads; None when `auto` uses the files
    already in `raw_dir`. `auto` takes, in order: data/input, data/raw as it is, a Kaggle
    notebook's mounted input, the Kaggle API."""
    if params.source != "auto":
        return params.source, params
    input_dir = input_folder(raw_dir)
    if input_files(input_dir):
        console.print(f"fetch: the files you put in {input_dir}/ → {raw_dir}")
        return "local", dataclasses.replace(params, path=str(input_dir))
    dropped = archives_in(raw_dir)
    if dropped:  # even beside files: it would be silently left unused
        raise PipelineError(
            f"{dropped[0]}: an archive in {raw_dir}, which fetch writes; move it "
            f"to {input_dir}/, where data.source: auto unpacks it"
        )
    problem = None
    if raw_files_present(raw_dir):
        try:  # official sizes only: leftover synthetic demo data must not pass for the real thing
            count = check_raw(raw_dir, official_counts=True)
        except PipelineError as error:
            problem = str(error)
            if fetched_source(raw_dir) == "synthetic":
                problem = f"{raw_dir}: holds the synthetic demo's data, not the competition's"
        else:
            console.print(
                f"fetch: using the files already in {raw_dir} ({count} custom test images)"
            )
            if user_entries(raw_dir):  # not fetch's: DVC may restore data/raw without them
                console.print(
                    f"fetch: keep your own copy in {input_dir}/ rather than {raw_dir}: "
                    f"`dvc exp run` and `dvc checkout` put {raw_dir} back as dvc.lock records it"
                )
            return None
    mounted = kaggle_notebook_data(params.competition)
    if mounted is not None:
        console.print(
            f"fetch: the competition's files are mounted at {mounted} (a Kaggle notebook)"
        )
        return "local", dataclasses.replace(params, path=str(mounted))
    if kaggle_credentials_source() is None:
        raise PipelineError(no_data_message(raw_dir, problem))
    return "kaggle", params


def _fetch_checked(raw_tmp: Path, source: str, params: DataParams, scratch: Path) -> int:
    _fetch_into(raw_tmp, source, params, scratch)
    count = check_raw(raw_tmp, official_counts=source != "synthetic")
    write_fetch_record(raw_tmp, source)
    return count


def run(params: DataParams, raw_dir: Path = RAW_DIR) -> None:
    with disk_errors_reported(raw_dir):
        raw_dir.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(raw_dir.parent):  # one fetch at a time: debris is never a live run's
            recover_directory(raw_dir)  # before `auto` looks: a killed swap hid the data
            remove_debris(raw_dir.parent, f"{SCRATCH_PREFIX}*")
            if raw_dir.is_dir():  # an unpacking of a dropped zip, killed
                remove_debris(raw_dir, f"{SCRATCH_PREFIX}*")
            chosen = _chosen_source(params, raw_dir)
            if chosen is not None:
                _fetch(*chosen, raw_dir)
    if chosen is not None and chosen[0] == "url":
        warn_of_secrets_in_params(params)


def _fetch(source: str, params: DataParams, raw_dir: Path) -> None:
    linked = linked_folder_in_use(raw_dir)
    refuse_to_replace_user_files(raw_dir)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=raw_dir.parent) as scratch:
        if linked is None:
            with atomic_directory(raw_dir) as raw_tmp:
                count = _fetch_checked(raw_tmp, source, params, Path(scratch))
            console.print(f"fetch: {source} → {raw_dir} ({count} custom test images)")
            return
        fetched = Path(scratch) / "raw"
        fetched.mkdir()
        count = _fetch_checked(fetched, source, params, Path(scratch))
        require_same_files(fetched, linked, raw_dir, source)
    console.print(
        f"fetch: {raw_dir} links to {linked}, which already holds these files ({count} custom "
        "test images); left as it is"
    )
