"""A fake of Kaggle's API on 127.0.0.1, for the real kaggle client to talk to over HTTP in tests.

The client (kagglesdk, endpoint `KaggleEnv.LOCAL`) sends JSON POSTs to
`/api/v1/competitions.CompetitionApiService/<Method>` with HTTP Basic credentials, and uploads the
file with a PUT to the `createUrl` that StartSubmissionUpload returns. This fake answers
StartSubmissionUpload, the PUT, CreateSubmission and ListSubmissions the way Kaggle's API does
(camelCase JSON; errors as `{"code": N, "message": ...}`), keeps the submissions in memory, and
answers 401 to wrong credentials. `fail_next[method]` queues failures: (status, when), where
`when` is "before" (answer the error instead) or "after" (do the work, then answer the error,
as a server that fails after committing does). Method "Upload" is the PUT.

The misbehaviours the client must survive: `hang_next[method]` queues "before"/"after" hangs
(accept the request, maybe do the work, never answer; `on_hang` runs as it starts, e.g. to
interrupt the client) and `unresponsive` hangs every request; `echo_authorization` answers
every error with a message that quotes the request's Authorization header;
GetSubmission scores a submission (COMPLETE, `public_score_to_give`) once it has been polled
`score_after_polls` times; `description_limit` cuts the descriptions it stores.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import itertools
import json
import logging
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SERVICE = "competitions.CompetitionApiService"
HANG_LIMIT_SECONDS = 60.0  # a hung request gives up by itself after this, if the test never ends it


@dataclass
class FakeSubmission:
    ref: int
    competition: str
    description: str
    file_name: str
    content: bytes
    date: datetime.datetime
    status: str = "PENDING"
    public_score: str = ""
    private_score: str = ""
    error_description: str = ""

    def to_json(self) -> dict:
        return {
            "ref": self.ref, "date": self.date.isoformat(timespec="milliseconds") + "Z",
            "description": self.description, "fileName": self.file_name,
            "totalBytes": len(self.content), "status": self.status,
            "publicScore": self.public_score, "privateScore": self.private_score,
            "errorDescription": self.error_description,
            "submittedBy": "pipeline-tester", "teamName": "pipeline-tester",
        }  # fmt: skip

    @property
    def md5(self) -> str:
        return hashlib.md5(self.content).hexdigest()


class FakeKaggle:
    def __init__(self, username: str, key: str) -> None:
        self.expected_auth = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.submissions: list[FakeSubmission] = []
        self.fail_next: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.calls: list[str] = []  # method names, in the order they arrived
        self.hang_next: dict[str, list[str]] = defaultdict(list)
        self.unresponsive = False
        self.on_hang: Callable[[], None] | None = None
        self.echo_authorization = False
        self.score_after_polls: int | None = None  # GetSubmission calls before it is scored
        self.public_score_to_give = "0.91230"
        self.html_for: set[str] = set()  # methods answered with a login page, status 200 (a proxy)
        self.description_limit: int | None = None  # characters of a description it keeps
        self.json_for: dict[str, object] = {}  # methods answered with this JSON, status 200
        self._polls: dict[int, int] = defaultdict(int)
        self._released = threading.Event()  # set on exit: hung requests end without an answer
        self._uploads: dict[str, dict] = {}
        self._tokens = itertools.count(1)
        self._refs = itertools.count(48_000_001)
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKaggle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    # --- the API's methods: request dict → response dict ---------------------------------

    def start_submission_upload(self, request: dict) -> dict:
        token = f"blob-token-{next(self._tokens)}"
        self._uploads[token] = {"file_name": request["fileName"], "content": None,
                                "length": int(request["contentLength"])}  # fmt: skip
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def upload(self, token: str, content: bytes) -> int:
        upload = self._uploads.get(token)
        if upload is None:
            return 404
        upload["content"] = content
        return 200

    def create_submission(self, request: dict) -> dict:
        upload = self._uploads.get(request.get("blobFileTokens", ""))
        if upload is None or upload["content"] is None:
            raise _Answer(400, "no uploaded file for this token")
        submission = FakeSubmission(
            ref=next(self._refs), competition=request["competitionName"],
            description=request.get("submissionDescription", "")[: self.description_limit],
            file_name=upload["file_name"],
            content=upload["content"],
            date=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
        )  # fmt: skip
        self.submissions.append(submission)
        return {"message": "Successfully submitted", "ref": submission.ref}

    def get_submission(self, request: dict) -> dict:
        found = [s for s in self.submissions if s.ref == int(request.get("ref") or 0)]
        if not found:
            raise _Answer(404, f"no submission {request.get('ref')}")
        submission = found[0]
        self._polls[submission.ref] += 1
        if (
            self.score_after_polls is not None
            and self._polls[submission.ref] >= self.score_after_polls
        ):
            submission.status, submission.public_score = "COMPLETE", self.public_score_to_give
        return submission.to_json()

    def list_submissions(self, request: dict) -> dict:
        mine = [
            s for s in reversed(self.submissions) if s.competition == request["competitionName"]
        ]
        size = int(request.get("pageSize") or 20)
        token = request.get("pageToken")  # this fake's tokens are the next page's start index
        start = int(token) if token else (int(request.get("page") or 1) - 1) * size
        end = start + size
        return {
            "submissions": [s.to_json() for s in mine[start:end]],
            "nextPageToken": str(end) if end < len(mine) else "",
        }


@contextlib.contextmanager
def verbose_kaggle_client() -> Iterator[None]:
    """The client as a CI with VERBOSE=1 / VERBOSE_OUTPUT=yes runs it: it reads them once, at
    import (KaggleApi's class body adds '--verbose' to KaggleApi.args, which prints each request
    with its Authorization header, and sets up DEBUG logging to stderr). The tests imported it
    already, so this sets what that import gives, and undoes it afterwards."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    saved_args, saved_env = (
        KaggleApi.args,
        {n: os.environ.get(n) for n in ("VERBOSE", "VERBOSE_OUTPUT")},
    )
    root = logging.getLogger()
    saved_level, handler = root.level, logging.StreamHandler(sys.stderr)
    os.environ.update(VERBOSE="1", VERBOSE_OUTPUT="yes")
    KaggleApi.args = [*saved_args, "--verbose"]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        KaggleApi.args = saved_args
        root.removeHandler(handler)
        root.setLevel(saved_level)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Answer(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


METHODS = {
    "StartSubmissionUpload": FakeKaggle.start_submission_upload,
    "CreateSubmission": FakeKaggle.create_submission,
    "ListSubmissions": FakeKaggle.list_submissions,
    "GetSubmission": FakeKaggle.get_submission,
}


def _handler_for(fake: FakeKaggle) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().strip(), 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: dict) -> None:
            method = self.path.rpartition("/")[2]
            data = json.dumps(fake.json_for.get(method, payload)).encode()
            kind = "application/json"
            if self.path.rpartition("/")[2] in fake.html_for:
                data, kind = b"<html><body>Please sign in to the network</body></html>", "text/html"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _queued_failure(self, method: str, when: str) -> int | None:
            queue = fake.fail_next[method]
            if queue and queue[0][1] == when:
                return queue.pop(0)[0]
            return None

        def _queued_hang(self, method: str, when: str) -> bool:
            queue = fake.hang_next[method]
            if fake.unresponsive and when == "before":
                return True
            if queue and queue[0] == when:
                queue.pop(0)
                return True
            return False

        def _error(self, status: int, message: str) -> tuple[int, dict]:
            if fake.echo_authorization:  # as a careless proxy answers
                message = f"refused a request with Authorization: {self.headers['Authorization']}"
            return status, {"code": status, "message": message}

        def _hang(self) -> None:
            """Keep the connection open and never answer (outside the lock: others go on)."""
            if fake.on_hang is not None:
                fake.on_hang()
            fake._released.wait(HANG_LIMIT_SECONDS)
            self.close_connection = True

        def _respond(self, answer: tuple[int, dict] | None) -> None:
            if answer is None:
                return self._hang()
            self._send(*answer)

        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            body = self._body()
            with fake._lock:
                fake.calls.append("Upload")
                answer = self._answer_upload(body)
            self._respond(answer)

        def _answer_upload(self, body: bytes) -> tuple[int, dict] | None:
            if self._queued_hang("Upload", "before"):
                return None
            if (status := self._queued_failure("Upload", "before")) is not None:
                return self._error(status, f"fake failure {status}")
            return fake.upload(self.path.rsplit("/", 1)[-1], body), {}

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            prefix, _, method = self.path.rpartition("/")
            with fake._lock:
                fake.calls.append(method)
                answer = self._answer_post(prefix, method, body)
            self._respond(answer)

        def _answer_post(self, prefix: str, method: str, body: bytes) -> tuple[int, dict] | None:
            """The status and JSON to answer, or None to hang."""
            if self._queued_hang(method, "before"):
                return None
            if prefix != f"/api/v1/{SERVICE}" or method not in METHODS:
                return self._error(404, f"no method {self.path}")
            if self.headers.get("Authorization") != fake.expected_auth:
                return self._error(401, "Unauthenticated")
            if (status := self._queued_failure(method, "before")) is not None:
                return self._error(status, f"fake failure {status}")
            try:
                answer = METHODS[method](fake, json.loads(body or b"{}"))
            except _Answer as error:
                return self._error(error.status, error.message)
            if self._queued_hang(method, "after"):
                return None
            if (status := self._queued_failure(method, "after")) is not None:
                return self._error(status, f"fake failure {status}")
            return 200, answer

    return Handler
