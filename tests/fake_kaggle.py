"""A fake of Kaggle's API on 127.0.0.1, for the real kaggle client to talk to over HTTP in tests.

The client (kagglesdk, endpoint `KaggleEnv.LOCAL`) sends JSON POSTs to
`/api/v1/competitions.CompetitionApiService/<Method>` with HTTP Basic credentials, and uploads the
file with a PUT to the `createUrl` that StartSubmissionUpload returns. This fake answers
StartSubmissionUpload, the PUT, CreateSubmission and ListSubmissions the way Kaggle's API does
(camelCase JSON; errors as `{"code": N, "message": ...}`), keeps the submissions in memory, and
answers 401 to wrong credentials. `fail_next[method]` queues failures: (status, when), where
`when` is "before" (answer the error instead) or "after" (do the work, then answer the error,
as a server that fails after committing does). Method "Upload" is the PUT.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import itertools
import json
import threading
from collections import defaultdict
from dataclasses import dataclass

SERVICE = "competitions.CompetitionApiService"


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

    def to_json(self) -> dict:
        return {
            "ref": self.ref, "date": self.date.isoformat(timespec="milliseconds") + "Z",
            "description": self.description, "fileName": self.file_name,
            "totalBytes": len(self.content), "status": self.status,
            "publicScore": self.public_score, "privateScore": self.private_score,
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
            description=request.get("submissionDescription", ""), file_name=upload["file_name"],
            content=upload["content"],
            date=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
        )  # fmt: skip
        self.submissions.append(submission)
        return {"message": "Successfully submitted", "ref": submission.ref}

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


class _Answer(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


METHODS = {
    "StartSubmissionUpload": FakeKaggle.start_submission_upload,
    "CreateSubmission": FakeKaggle.create_submission,
    "ListSubmissions": FakeKaggle.list_submissions,
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
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _queued_failure(self, method: str, when: str) -> int | None:
            queue = fake.fail_next[method]
            if queue and queue[0][1] == when:
                return queue.pop(0)[0]
            return None

        def _fail(self, status: int) -> None:
            self._send(status, {"code": status, "message": f"fake failure {status}"})

        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            body = self._body()
            with fake._lock:
                fake.calls.append("Upload")
                if (status := self._queued_failure("Upload", "before")) is not None:
                    return self._fail(status)
                token = self.path.rsplit("/", 1)[-1]
                self._send(fake.upload(token, body), {})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            prefix, _, method = self.path.rpartition("/")
            with fake._lock:
                fake.calls.append(method)
                if prefix != f"/api/v1/{SERVICE}" or method not in METHODS:
                    return self._send(404, {"code": 404, "message": f"no method {self.path}"})
                if self.headers.get("Authorization") != fake.expected_auth:
                    return self._send(401, {"code": 401, "message": "Unauthenticated"})
                if (status := self._queued_failure(method, "before")) is not None:
                    return self._fail(status)
                try:
                    answer = METHODS[method](fake, json.loads(body or b"{}"))
                except _Answer as error:
                    return self._send(
                        error.status, {"code": error.status, "message": error.message}
                    )
                if (status := self._queued_failure(method, "after")) is not None:
                    return self._fail(status)
                self._send(200, answer)

    return Handler
