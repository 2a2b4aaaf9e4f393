"""The kaggle client as fetch, submit and scores use it: credentials, errors, retries.

Everything goes through the official `kaggle` package (`KaggleApi`), which talks to Kaggle's
JSON API (`POST /v1/<service>/<method>`) and uploads files with a PUT to the URL Kaggle returns.
This module adds what a pipeline command needs around it: a clear error when no credentials are
set up, one-line errors that say what Kaggle answered, and retries of transient failures
(HTTP 5xx and 429, dropped connections), which the client itself does not retry for submissions.
Credentials are only ever named by where they were found, never printed.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import requests

from pipeline.errors import PipelineError
from pipeline.reporting import console

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

T = TypeVar("T")

ATTEMPTS = 4  # one call and up to three retries
RETRY_DELAY_SECONDS = 2.0  # before the first retry; doubled after each
LIST_PAGE_SIZE = 100  # submissions per ListSubmissions page
CREDENTIALS_HELP = (
    "put kaggle.json in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, or set "
    "KAGGLE_API_TOKEN (from kaggle.com/settings)"
)


def kaggle_config_dir() -> Path:
    """Where the kaggle client looks for kaggle.json / access_token (its own rules)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home_dir = Path.home() / ".kaggle"
    if home_dir.exists():
        return home_dir
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def kaggle_credentials_source() -> str | None:
    """Name where the kaggle client will find credentials (never their value), or None.

    The client's own places: KAGGLE_API_TOKEN, KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json in its
    config folder, and ~/.kaggle/access_token(.txt) and ~/.kaggle/credentials.json (`kaggle auth
    login`), which it reads from the home folder whatever KAGGLE_CONFIG_DIR says.
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    home_dir = Path.home() / ".kaggle"
    candidates = [kaggle_config_dir() / "kaggle.json"] + [
        home_dir / name for name in ("access_token", "access_token.txt", "credentials.json")
    ]
    return next((str(path) for path in candidates if path.is_file()), None)


def warn_if_readable_by_others() -> None:
    """kaggle.json holds the API key: other users of the machine must not be able to read it."""
    for path in (kaggle_config_dir() / "kaggle.json", Path.home() / ".kaggle" / "access_token"):
        if path.is_file() and path.stat().st_mode & 0o077:
            console.print(
                f"[yellow]warning: {path} (your Kaggle key) can be read by other users of this "
                f"machine; run `chmod 600 {path}`"
            )


def connect(command: str) -> KaggleApi:
    """An authenticated client; `command` ("submit", "scores", ...) prefixes any error.

    The client prints its help text and exits when it finds no usable credentials; that text
    is kept off the console (this error says it in one line) and the exit becomes the error.
    """
    if kaggle_credentials_source() is None:
        raise PipelineError(f"{command}: no Kaggle credentials found: {CREDENTIALS_HELP}")
    warn_if_readable_by_others()
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported late: it reads credentials

    api = KaggleApi()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (SystemExit, Exception) as error:  # noqa: BLE001 - token checks can fail many ways
        reason = "" if isinstance(error, SystemExit) else f" ({describe(error)})"
        raise PipelineError(
            f"{command}: Kaggle authentication failed{reason}; check your Kaggle credentials "
            f"({CREDENTIALS_HELP})"
        ) from None
    return api


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error: Exception) -> bool:
    """Worth another try: the server failed (5xx), asked us to slow down (429), or the link broke."""
    status = _status(error)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(error, (requests.ConnectionError, requests.Timeout, UploadIncomplete))


def describe(error: Exception) -> str:
    """What Kaggle answered, in words; never the request (which carries the credentials)."""
    status = _status(error)
    if status in (401, 403):
        return (
            f"Kaggle rejected the credentials (HTTP {status}); check them ({CREDENTIALS_HELP}), "
            "and that you accepted the competition's rules"
        )
    if status is not None:
        message = str(error.args[0]) if error.args else ""
        return f"HTTP {status}" + (
            f" ({message})" if message and str(status) not in message else ""
        )
    if isinstance(error, requests.ConnectionError):
        return "could not connect to Kaggle (network down or Kaggle unreachable)"
    return f"{type(error).__name__}: {error}"


class UploadIncomplete(Exception):
    """The client's upload of the CSV did not complete (it reports this as a message, not an error)."""


def call(action: Callable[[], T], what: str, recorded: Callable[[], T | None] | None = None) -> T:
    """`action()`, retried on transient errors (ATTEMPTS in all, delays doubling).

    `recorded()` runs after each transient failure (the last one too); when it returns a
    result, that result stands for the action's. Submit uses it to find a submission Kaggle
    stored although it answered with an error, instead of submitting twice. A lasting or
    non-transient error becomes one `PipelineError`.
    """
    delay = RETRY_DELAY_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except PipelineError:
            raise
        except Exception as error:  # noqa: BLE001 - the client raises many types; classified below
            transient = is_transient(error)
            if transient and recorded is not None and (found := recorded()) is not None:
                return found
            if not transient or attempt == ATTEMPTS:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise PipelineError(f"kaggle: {what} failed{tries}: {describe(error)}") from None
            console.print(
                f"kaggle: {what}: {describe(error)}; retrying in {delay:g} s "
                f"(attempt {attempt + 1} of {ATTEMPTS})"
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def list_submissions(api: KaggleApi, competition: str) -> list:
    """Every submission of the account to `competition` (`ApiSubmission`s, newest first).

    Follows the response's next_page_token; a server that sends none but fills the page gets
    asked for the next page number. Stops at a page with nothing new, so it always ends.
    """
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    submissions: list = []
    seen: set[int] = set()
    page, token = 1, ""
    with api.build_kaggle_client() as client:
        while True:
            request = ApiListSubmissionsRequest()
            request.competition_name = competition
            request.page_size = LIST_PAGE_SIZE
            if token:
                request.page_token = token
            else:
                request.page = page
            response = call(
                lambda request=request: client.competitions.competition_api_client.list_submissions(
                    request
                ),
                f"listing the submissions to '{competition}'",
            )
            batch = [item for item in response.submissions or [] if item is not None]
            new = [item for item in batch if item.ref not in seen]
            submissions.extend(new)
            seen.update(item.ref for item in new)
            token = response.next_page_token or ""
            if not new or (not token and len(batch) < LIST_PAGE_SIZE):
                return submissions
            page += 1


def submission_refs(api: KaggleApi, competition: str) -> set[int]:
    """The references of the account's submissions so far (submit's "before" snapshot)."""
    return {item.ref for item in list_submissions(api, competition)}


def submit_file(
    api: KaggleApi, competition: str, csv_path: Path, upload_name: str, message: str,
    refs_before: set[int],
) -> int:  # fmt: skip
    """Submit `csv_path` (uploaded as `upload_name`) with `message`; return Kaggle's reference.

    After a transient failure it looks for a submission Kaggle stored despite the error (this
    message, a reference not in `refs_before`), so a 5xx after the fact never makes a second one.
    """
    may_be_recorded = (
        "; it may have been recorded anyway: check `python -m pipeline scores` before "
        "submitting again"
    )

    def recorded() -> int | None:
        try:
            submissions = list_submissions(api, competition)
        except PipelineError as error:
            raise PipelineError(f"{error}{may_be_recorded}") from None
        found = [
            s.ref for s in submissions if s.ref not in refs_before and s.description == message
        ]
        return found[0] if found else None

    with tempfile.TemporaryDirectory(prefix="submit-") as folder:
        upload = Path(folder) / upload_name  # Kaggle shows the file name: it carries the run_id
        upload.write_bytes(csv_path.read_bytes())

        def attempt() -> int:
            # the client prints upload errors itself, upload URL included: keep that off the console
            with contextlib.redirect_stdout(io.StringIO()):
                response = api.competition_submit(str(upload), message, competition, quiet=True)
            if response.ref:
                return response.ref
            if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
                raise UploadIncomplete(f"uploading {csv_path} did not complete")
            found = recorded()  # accepted, but the answer had no reference: find it in the list
            if found is None:
                raise PipelineError(
                    f"kaggle: the submission was sent but Kaggle returned no reference "
                    f"({response.message or 'no message'}){may_be_recorded}"
                )
            return found

        return call(attempt, f"submitting {csv_path} to '{competition}'", recorded=recorded)
