"""The kaggle client as fetch, submit and scores use it: credentials, errors, retries.

Everything goes through the official `kaggle` package (`KaggleApi`), which talks to Kaggle's
JSON API (`POST /v1/<service>/<method>`) and uploads files with a PUT to the URL Kaggle returns.
This module adds what a pipeline command needs around it: a clear error when no credentials are
set up, one-line errors that say what Kaggle answered, and retries of transient failures
(HTTP 5xx and 429, dropped connections, timeouts), which the client itself does not retry for
submissions. Every call runs under `guarded()`: connect and read timeouts on each HTTP request
(the client sets none, so a server that accepts and never answers would hang us forever).
Credentials are only ever named by where they were found, never printed: the client's own
verbose mode (VERBOSE=1 or VERBOSE_OUTPUT=yes, which prints the Authorization header) is turned
off for our calls, and every text from Kaggle or the client that we print passes `redact()`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import requests
import requests.adapters

from pipeline.errors import PipelineError
from pipeline.integrations.kaggle_credentials import (
    CREDENTIALS_HELP,
    check_kaggle_json,
    credential_strings,
    kaggle_credentials_source,
    known_secrets,
    redact,
    warn_if_readable_by_others,
)
from pipeline.integrations.kaggle_marks import find_submission
from pipeline.reporting import console

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk.competitions.types.competition_api_service import ApiSubmission

T = TypeVar("T")

ATTEMPTS = 4  # one call and up to three retries
RETRY_DELAY_SECONDS = 2.0  # before the first retry; doubled after each
LIST_PAGE_SIZE = 100  # submissions per ListSubmissions page
MAX_LIST_PAGES = 100  # 10,000 submissions: a semester at Kaggle's 10 a day is ~1,500
CONNECT_TIMEOUT_SECONDS = 10.0  # to open a connection to Kaggle (TCP + TLS)
# the longest silence while waiting for Kaggle's answer (or the next block of a download): the
# whole answer may take longer. A hung call costs ATTEMPTS of these before it fails.
READ_TIMEOUT_SECONDS = 60.0
VERBOSE_FLAGS = ("--verbose", "-v")  # KaggleApi.args gets one at import when VERBOSE=1 is set


def _quiet_client(api: KaggleApi) -> None:
    """Turn the client's verbose mode off for this instance (it would print our credentials)."""
    api.args = [arg for arg in getattr(api, "args", []) if arg not in VERBOSE_FLAGS]


# --- timeouts ---------------------------------------------------------------------------------

_library_send = requests.adapters.HTTPAdapter.send  # what every requests session sends through


def _send_with_timeouts(
    adapter: requests.adapters.HTTPAdapter, request: requests.PreparedRequest,
    stream: bool = False, timeout: object = None, **options: object,
) -> requests.Response:  # fmt: skip
    """HTTPAdapter.send, with our timeouts where the caller (kagglesdk, its upload) set none."""
    if timeout is None:
        timeout = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
    response = _library_send(adapter, request, stream=stream, timeout=timeout, **options)
    if response.status_code == 200 and (request.url or "").endswith("/ListSubmissions"):
        check_list_answer(response)
    return response


LIST_FIELDS = ("submissions", "nextPageToken")  # of ListSubmissions' answer ({} when none)


class UnexpectedAnswer(Exception):
    """Kaggle's status was 200, but the JSON is not the shape the call answers with."""


def check_list_answer(response: requests.Response) -> None:
    """A ListSubmissions answer with none of its fields (`{"error": ...}` from a proxy, an API
    that moved) was read by kagglesdk as no submissions: submit then saw no earlier attempt
    and a day with nothing sent. Refused instead; a field added beside them passes."""
    try:
        answer = response.json()
    except ValueError:  # not JSON at all: kagglesdk's own reading says so (describe)
        return
    submissions = answer.get("submissions", []) if isinstance(answer, dict) else None
    if (
        not isinstance(answer, dict)
        or (answer and not any(field in answer for field in LIST_FIELDS))
        or not isinstance(submissions, list)
        or not all(isinstance(item, dict) for item in submissions)
    ):
        raise UnexpectedAnswer(
            "the answer was JSON but not Kaggle's list of submissions (a proxy's, or an API "
            "that changed?); try again later, or update the kaggle package"
        )


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """What every call to Kaggle runs under: timeouts on each request, and urllib3's log (which
    names the upload's signed URL, printed when VERBOSE=1 set up DEBUG logging) kept quiet.

    kagglesdk and the client's upload open their own `requests` sessions without a timeout and
    offer no setting for one, so the adapter every session sends through gets them here, only
    while our call runs (a command is one thread). Nested uses (a retry's lookup) are no-ops.
    """
    adapter = requests.adapters.HTTPAdapter
    if adapter.send is _send_with_timeouts:
        yield
        return
    from kagglesdk.kaggle_object import EnumSerializer

    urllib3_log = logging.getLogger("urllib3")
    level = urllib3_log.level
    strict_enum = EnumSerializer.__dict__["_from_str"]
    adapter.send = _send_with_timeouts
    urllib3_log.setLevel(max(level, logging.WARNING))
    EnumSerializer._from_str = staticmethod(_lenient_enum(strict_enum.__func__))
    try:
        yield
    finally:
        adapter.send = _library_send
        urllib3_log.setLevel(level)
        EnumSerializer._from_str = strict_enum


def _lenient_enum(strict: Callable) -> Callable:
    """kagglesdk's enum reading, keeping a value this client does not know yet (a new state of
    one submission) as its text: otherwise its KeyError fails every listing, and so submit."""

    def from_str(cls: type, value: object) -> object:
        try:
            return strict(cls, value)
        except (KeyError, AttributeError, TypeError):  # a name it lacks; a number; null
            return str(value)

    return from_str


# --- the client -------------------------------------------------------------------------------


def connect(command: str) -> KaggleApi:
    """An authenticated, quiet client; `command` ("submit", "scores", ...) prefixes any error.

    The client prints its help text and exits when it finds no usable credentials; that text
    is kept off the console (this error says it in one line) and the exit becomes the error.
    """
    if kaggle_credentials_source() is None:
        raise PipelineError(f"{command}: no Kaggle credentials found: {CREDENTIALS_HELP}")
    check_kaggle_json()
    warn_if_readable_by_others()
    # imported late, and quietly: at import the client authenticates once (kaggle/__init__.py),
    # printing its help, or with VERBOSE=1 the request it sends, to stdout
    try:
        with guarded(), contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except (SystemExit, Exception) as error:  # noqa: BLE001 - e.g. its config folder (HOME) read-only
        reason = "" if isinstance(error, SystemExit) else f" ({describe(error)})"
        raise PipelineError(
            f"{command}: the kaggle client could not start{reason}; where the home folder is "
            "read-only (a cluster node, a container), set KAGGLE_CONFIG_DIR to a writable folder "
            "holding kaggle.json"
        ) from None

    api = KaggleApi()
    _quiet_client(api)
    try:
        with guarded(), contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (SystemExit, Exception) as error:  # noqa: BLE001 - token checks can fail many ways
        reason = "" if isinstance(error, SystemExit) else f" ({describe(error)})"
        raise PipelineError(
            f"{command}: Kaggle authentication failed{reason}; check your Kaggle credentials "
            f"({CREDENTIALS_HELP})"
        ) from None
    config = getattr(api, "config_values", {})
    known_secrets.update(
        credential_strings(config.get("username"), config.get("key"), config.get("token"))
    )
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
    """What Kaggle answered, in words, redacted; never the request (it carries the credentials)."""
    return redact(_describe(error))


def _describe(error: Exception) -> str:
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
    if isinstance(error, requests.ConnectTimeout):
        return f"no connection to Kaggle within {CONNECT_TIMEOUT_SECONDS:g} s (network down?)"
    if isinstance(error, requests.ReadTimeout):
        return f"Kaggle did not answer within {READ_TIMEOUT_SECONDS:g} s"
    if isinstance(error, requests.ConnectionError):
        return "could not connect to Kaggle (network down or Kaggle unreachable)"
    if isinstance(error, UnexpectedAnswer):
        return str(error)
    if isinstance(error, json.JSONDecodeError):  # requests' too: an HTML page with status 200
        return (
            "the answer was not Kaggle's JSON (a proxy's or a captive portal's page?); check the "
            "network, or try again later"
        )
    return f"{type(error).__name__}: {error}"


class UploadIncomplete(Exception):
    """The client's upload of the CSV did not complete (it reports this as a message, not an error)."""


def call(action: Callable[[], T], what: str, recorded: Callable[[], T | None] | None = None) -> T:
    """`action()` under `guarded()`, retried on transient errors (ATTEMPTS in all, delays doubling).

    `recorded()` runs after each transient failure (the last one too); when it returns a
    result, that result stands for the action's. Submit uses it to find a submission Kaggle
    stored although it answered with an error, instead of submitting twice. A lasting or
    non-transient error becomes one `PipelineError`.
    """
    delay = RETRY_DELAY_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with guarded():
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
                f"(attempt {attempt + 1} of {ATTEMPTS})",
                markup=False,  # Kaggle's text: "[redacted]" or a "[/b]" is not rich markup
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
            if page > MAX_LIST_PAGES:  # a server that never stops sending pages
                raise PipelineError(
                    f"listing the submissions to '{competition}': Kaggle kept sending pages past "
                    f"{MAX_LIST_PAGES * LIST_PAGE_SIZE:,} submissions (more than an account "
                    "makes); stopped: try again later"
                )
            request = ApiListSubmissionsRequest()
            request.competition_name = competition
            request.page_size = LIST_PAGE_SIZE
            if token:
                request.page_token = str(token)  # (a number from an odd server)
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
            page += 1  # (counted for a token's pages too: they end at MAX_LIST_PAGES)


def get_submission(api: KaggleApi, ref: int) -> ApiSubmission:
    """One submission, as Kaggle sees it now (status, public_score, error_description)."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    request = ApiGetSubmissionRequest()
    request.ref = ref
    with api.build_kaggle_client() as client:
        return call(
            lambda: client.competitions.competition_api_client.get_submission(request),
            f"reading submission {ref}",
        )


def submit_file(
    api: KaggleApi, competition: str, csv_path: Path, csv_bytes: bytes, run_id: str,
    message: str, refs_before: set[int],
) -> int:  # fmt: skip
    """Submit `csv_bytes` (read from `csv_path`, uploaded as `<run_id>.csv`) with `message`;
    return Kaggle's reference.

    After a transient failure it looks for a submission Kaggle stored despite the error (of this
    run, a reference not in `refs_before`), so a 5xx after the fact never makes a second one.
    """
    may_be_recorded = (
        "; it may have been recorded anyway: the next `python -m pipeline submit` looks for it "
        "in Kaggle's list before sending again"
    )

    def recorded() -> int | None:
        try:
            submissions = list_submissions(api, competition)
        except PipelineError as error:
            raise PipelineError(f"{error}{may_be_recorded}") from None
        return find_submission(submissions, run_id, refs_before)

    with tempfile.TemporaryDirectory(prefix="submit-") as folder:
        upload = Path(folder) / f"{run_id}.csv"  # Kaggle shows the file name: it carries the run_id
        upload.write_bytes(csv_bytes)  # the bytes submit checked, not a second read

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
                    f"({redact(response.message or 'no message')}){may_be_recorded}"
                )
            return found

        return call(attempt, f"submitting {csv_path} to '{competition}'", recorded=recorded)
