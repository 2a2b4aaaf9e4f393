"""The kaggle client under conditions CI and real networks bring: verbose mode, a server that
echoes credentials, one that never answers; and the pure rules submit leans on (what counts as
today's submissions, what a run that learned nothing looks like).

Fast: the real client against the fake Kaggle API, no project run (submit's end-to-end cases are
in test_submission_lifecycle.py).
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAKE_KAGGLE_KEY, FAKE_KAGGLE_USERNAME, REPO_ROOT
from fake_kaggle import FakeSubmission, verbose_kaggle_client

from pipeline.__main__ import main
from pipeline.commands import submit, submit_checks
from pipeline.config.params import DataParams
from pipeline.errors import PipelineError
from pipeline.integrations import kaggle_client
from pipeline.records.manifest import RunSummary
from pipeline.stages import fetch

COMPETITION = "deep-learning-spring-2025-project-1"
SHORT_READ_TIMEOUT_SECONDS = 0.3  # a hung call gives up this fast in these tests


def basic_credential() -> str:
    return base64.b64encode(f"{FAKE_KAGGLE_USERNAME}:{FAKE_KAGGLE_KEY}".encode()).decode()


@pytest.fixture
def scores_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder with the project's params.yaml, as the cwd: `scores` needs nothing else."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", folder / "params.yaml")
    monkeypatch.chdir(folder)
    return folder


def test_the_kaggle_client_turns_verbose_on_at_import_from_the_environment(tmp_path: Path) -> None:
    """The premise of `verbose_kaggle_client`, checked on a fresh interpreter."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "VERBOSE_OUTPUT": "yes"}
    result = subprocess.run(
        [sys.executable, "-c", "from kaggle.api.kaggle_api_extended import KaggleApi as K; "
         "print('ARGS', K.args)"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "ARGS ['--verbose']" in result.stdout


def test_redact_removes_http_credentials_the_key_and_its_base64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", FAKE_KAGGLE_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KAGGLE_KEY)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123456789abcdef")
    text = (
        f"Authorization: Basic {basic_credential()} / Bearer KGAT_0123456789abcdef / "
        f"key={FAKE_KAGGLE_KEY} / url-safe {base64.urlsafe_b64encode(b'x:' + b'y' * 9).decode()}"
        " / Bearer eyJhbGciOiJIUzI1NiJ9.unknown-token"
    )
    redacted = kaggle_client.redact(text)
    for secret in (basic_credential(), FAKE_KAGGLE_KEY, "KGAT_0123456789abcdef", "eyJhbGciOi"):
        assert secret not in redacted
    assert redacted.startswith("Authorization: Basic [redacted] / Bearer [redacted] / key=")
    assert kaggle_client.redact("HTTP 500 (fake failure 500)") == "HTTP 500 (fake failure 500)"


def test_scores_with_a_verbose_client_and_an_echoing_server_prints_no_credentials(
    fake_kaggle, scores_folder: Path, capfd: pytest.CaptureFixture
) -> None:
    fake_kaggle.echo_authorization = True
    with verbose_kaggle_client():
        fake_kaggle.fail_next["ListSubmissions"].append((503, "before"))  # retried: text printed
        assert main(["scores"]) == 0
        fake_kaggle.fail_next["ListSubmissions"].extend([(500, "before")] * kaggle_client.ATTEMPTS)
        assert main(["scores"]) == 1  # the lasting error's one line carries the echoed text
    captured = capfd.readouterr()  # file descriptors: whatever the client prints itself too
    printed = captured.out + captured.err
    assert FAKE_KAGGLE_KEY not in printed and basic_credential() not in printed
    assert fake_kaggle.expected_auth not in printed
    # one retry line, then ATTEMPTS - 1 retry lines and the error line: each with the echo
    echoed = printed.count("refused a request with Authorization: Basic [redacted]")
    assert echoed == 1 + kaggle_client.ATTEMPTS


def test_scores_shows_kaggles_error_text_as_text_and_redacted(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    fake_kaggle.submissions.append(FakeSubmission(
        ref=1, competition=COMPETITION, description="by hand", file_name="x.csv", content=b"x",
        date=datetime.datetime(2026, 3, 4), status="ERROR",
        error_description="row 3 [/b] is not an int; proxy saw Bearer KGAT_0123456789abcdef",
    ))  # fmt: skip
    assert main(["scores"]) == 0
    table = capsys.readouterr().out
    assert "[/b]" in table and "Bearer [redacted]" in table and "KGAT_0123" not in table


def test_scores_against_a_server_that_never_answers_fails_within_the_timeouts(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT_SECONDS)
    fake_kaggle.unresponsive = True
    started = time.monotonic()
    assert main(["scores"]) == 1
    assert time.monotonic() - started < 30  # ATTEMPTS × 0.3 s, not forever
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"after {kaggle_client.ATTEMPTS} attempts" in line
    assert f"Kaggle did not answer within {SHORT_READ_TIMEOUT_SECONDS:g} s" in line
    assert fake_kaggle.calls == ["ListSubmissions"] * kaggle_client.ATTEMPTS


def test_the_kaggle_fetch_from_a_server_that_never_answers_fails_within_the_timeouts(
    fake_kaggle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch calls the client through connect() and call(): it gets the same timeouts."""
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT_SECONDS)
    fake_kaggle.unresponsive = True
    started = time.monotonic()
    with pytest.raises(PipelineError, match="did not answer within 0.3 s") as raised:
        fetch.run(DataParams(source="kaggle"), tmp_path / "data/raw")
    assert time.monotonic() - started < 30
    assert "\n" not in str(raised.value) and fake_kaggle.calls  # it did reach the server


def _listed(date: datetime.datetime, status: str = "COMPLETE") -> SimpleNamespace:
    return SimpleNamespace(date=date, status=SimpleNamespace(name=status))


def test_todays_submissions_are_counted_over_kaggles_utc_day() -> None:
    now = datetime.datetime(2026, 3, 4, 23, 30, tzinfo=datetime.timezone.utc)
    naive_utc = datetime.datetime(2026, 3, 4, 0, 5)  # kagglesdk's dates: naive, in UTC
    listed = [
        _listed(naive_utc),
        _listed(datetime.datetime(2026, 3, 4, 23, 0)),
        _listed(datetime.datetime(2026, 3, 4, 12, 0), status="ERROR"),  # does not count
        _listed(datetime.datetime(2026, 3, 3, 23, 59)),  # yesterday
        _listed(None),
    ]
    assert submit_checks.made_today(listed, now) == 2
    # 01:30 in UTC+2 is 23:30 UTC of the day before: the same Kaggle day
    local = now.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert submit_checks.made_today(listed, local) == 2
    assert submit_checks.next_day_utc(local) == datetime.datetime(
        2026, 3, 5, tzinfo=datetime.timezone.utc
    )


def _summary(val_accuracy: float | None) -> RunSummary:
    return RunSummary(
        run_id="abc123def456", csv_md5=None, model="seed_resnet", model_params=1,
        val_accuracy=val_accuracy, tta=None, device=None, torch=None,
    )  # fmt: skip


CSV = Path("submissions/latest.csv")


def test_a_run_at_chance_or_predicting_one_class_is_named_and_a_real_one_is_not() -> None:
    varied = [i % 10 for i in range(50)]
    assert submit.learned_nothing(_summary(0.8123), CSV, varied) == {}
    assert submit.learned_nothing(_summary(None), CSV, varied) == {}  # an old manifest: no claim
    at_chance = submit.learned_nothing(_summary(0.1012), CSV, varied)
    assert (
        list(at_chance) == ["chance"]
        and "validation accuracy 0.1012, at chance" in (at_chance["chance"])
    )
    one_class = submit.learned_nothing(_summary(0.8123), CSV, [3] * 50)
    assert list(one_class) == ["one-class"] and "is class 3 (cat)" in one_class["one-class"]


@pytest.mark.parametrize("option", ["poll_interval", "wait_limit"])
def test_a_wait_of_nan_seconds_is_refused_before_anything_is_sent(option: str) -> None:
    """`--wait-limit nan` polled forever; `--poll-interval nan` crashed after sending."""
    from pipeline.commands.submit import check_options

    values = {"poll_interval": 10.0, "wait_limit": 600.0} | {option: float("nan")}
    with pytest.raises(PipelineError, match="must be finite seconds"):
        check_options(values["poll_interval"], values["wait_limit"], 10)


@pytest.mark.parametrize(
    "damage",
    [
        {"row": {}},
        {"refs_before": 5},
        {"refs_before": ["1"]},
        {"row": {"run_id": "../../x"}},
        {"row": {"commit": "--output=x"}},
    ],
)
def test_a_damaged_pending_record_is_one_line_and_never_reaches_history(
    tmp_path: Path, damage: dict
) -> None:
    from pipeline.commands.submit import read_pending

    row = {"submitted_utc": "2026-12-01T00:00:00+00:00", "run_id": "abc123def456",
           "commit": "a" * 40, "csv_md5": "0" * 32, "competition": "c", "message": "m",
           "forced": ""}  # fmt: skip
    good = {"row": row, "refs_before": [1, 2]}
    path = tmp_path / "pending_submission.json"
    path.write_text(json.dumps(good))
    assert read_pending(path).refs_before == [1, 2]
    damaged = good | {key: value for key, value in damage.items() if key != "row"}
    if "row" in damage:
        damaged["row"] = {} if not damage["row"] else row | damage["row"]
    path.write_text(json.dumps(damaged))
    with pytest.raises(PipelineError, match="pending_submission.json"):
        read_pending(path)


def test_scores_reads_a_numeric_score_and_a_state_this_client_does_not_know(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    """A number for publicScore crashed the table; an unknown state (kagglesdk's KeyError)
    failed every listing, and so every submit."""
    for ref, status, score in ((1, "COMPLETE", 0.9123), (2, "FROM_THE_FUTURE", "")):
        fake_kaggle.submissions.append(FakeSubmission(
            ref=ref, competition=COMPETITION, description="by hand", file_name="x.csv",
            content=b"x", date=datetime.datetime(2026, 3, 4), status=status, public_score=score,
        ))  # fmt: skip
    # a score of exactly 0, as a number: kagglesdk's getter (`value or ""`) said "no score"
    fake_kaggle.submissions.append(FakeSubmission(
        ref=3, competition=COMPETITION, description="all wrong", file_name="y.csv", content=b"y",
        date=datetime.datetime(2026, 3, 5), status="COMPLETE", public_score=0,
    ))  # fmt: skip
    assert main(["scores"]) == 0
    table = capsys.readouterr().out
    assert "0.9123" in table and "from_the_future" in table
    header = next(line for line in table.splitlines() if "public" in line)
    columns = [cell.strip() for cell in header.split("┃")]
    [zero] = [line for line in table.splitlines() if "│ 3 " in line]
    assert [cell.strip() for cell in zero.split("│")][columns.index("public")] == "0", table


def test_a_submission_list_that_never_ends_is_stopped(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that kept sending a next-page token was read forever (614 MB in 60 s)."""
    import fake_kaggle as fake_module

    monkeypatch.setattr(kaggle_client, "MAX_LIST_PAGES", 3)
    refs = itertools.count(1)

    def endless(fake: object, request: dict) -> dict:
        page = [FakeSubmission(ref=next(refs), competition=COMPETITION, description="x",
                               file_name="x.csv", content=b"x", date=datetime.datetime(2026, 3, 4))
                for _ in range(kaggle_client.LIST_PAGE_SIZE)]  # fmt: skip
        return {"submissions": [item.to_json() for item in page], "nextPageToken": str(next(refs))}

    monkeypatch.setitem(fake_module.METHODS, "ListSubmissions", endless)
    assert main(["scores"]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "Kaggle kept sending pages past 300 submissions" in line
    assert fake_kaggle.calls.count("ListSubmissions") == 3


def test_a_page_that_is_not_kaggles_json_and_a_truncated_kaggle_json_are_said_in_words(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_kaggle.html_for.add("ListSubmissions")  # a captive portal's page, with status 200
    assert main(["scores"]) == 1
    error = capsys.readouterr().err
    assert "not Kaggle's JSON (a proxy's or a captive portal's page?)" in error
    assert "JSONDecodeError" not in error
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    kaggle_json = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    kaggle_json.write_text('{"username": "pipeline-tester", "ke')
    assert main(["scores"]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"{kaggle_json}: not a JSON object (truncated or edited?)" in line
    assert "authentication failed" not in line


@pytest.mark.parametrize(
    "answer", [{"error": "session expired"}, [], {"submissions": "none"}, {"submissions": [1]}]
)
def test_a_list_answer_of_the_wrong_shape_is_not_read_as_no_submissions(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture, answer: object
) -> None:
    """kagglesdk read `{"error": ...}` with status 200 as an empty list: scores said "no
    submissions", and submit saw no earlier attempt and a day with nothing sent."""
    fake_kaggle.json_for["ListSubmissions"] = answer
    assert main(["scores"]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "the answer was JSON but not Kaggle's list of submissions" in line
    fake_kaggle.json_for["ListSubmissions"] = {}  # what Kaggle sends for none (proto3 JSON)
    assert main(["scores"]) == 0
    assert "no submissions to" in capsys.readouterr().out


def test_scores_shows_a_run_whose_manifest_has_a_wrongly_typed_field(scores_folder: Path) -> None:
    """A committed manifest with `val_accuracy: "0.9"` or `model: [...]` crashed scores."""
    from pipeline.commands.scores import score_rows
    from pipeline.records.history import FIELDS

    run = "0123456789ab"
    row = dict.fromkeys(FIELDS, "") | {"run_id": run, "competition": COMPETITION,
                                       "kaggle_ref": "7", "submitted_utc": "2026-03-04T05:06"}  # fmt: skip
    (scores_folder / "submissions").mkdir()
    for damage in ({"val_accuracy": "0.9"}, {"model": ["airnet"]}, {"model_params": True}):
        manifest = {"run_id": run, "model": "airnet", "val_accuracy": 0.9} | damage
        (scores_folder / f"submissions/{run}.json").write_text(json.dumps(manifest))
        [shown] = score_rows([], [row], COMPETITION)
        assert shown["model"] == "unreadable manifest" and shown["run_id"] == run, damage
    with pytest.raises(PipelineError, match=r"\.json: run manifest: model_params must be a numb"):
        from pipeline.records.manifest import read_manifest

        read_manifest(scores_folder / f"submissions/{run}.json")


def test_a_home_the_kaggle_client_cannot_write_is_one_line_with_the_fix(
    scores_folder: Path, tmp_path: Path
) -> None:
    """On a read-only HOME (HPC nodes, containers) the client's import crashed making its
    config folder, outside connect()'s error handling. A path under a file fails the same way."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**os.environ, "HOME": str(blocked), "KAGGLE_CONFIG_DIR": str(blocked / "kaggle"),
           "KAGGLE_USERNAME": FAKE_KAGGLE_USERNAME, "KAGGLE_KEY": FAKE_KAGGLE_KEY}  # fmt: skip
    env.pop("KAGGLE_API_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "scores"], cwd=scores_folder, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "the kaggle client could not start" in line and "set KAGGLE_CONFIG_DIR" in line
    assert FAKE_KAGGLE_KEY not in result.stderr + result.stdout


def test_a_second_submit_while_one_is_sending_stops_before_anything(tmp_path: Path) -> None:
    """Two submits at once sent the same CSV twice (two Kaggle refs, two of the day's quota),
    and one died on the other's pending_submission.json."""
    folder = tmp_path / "submissions"
    folder.mkdir()
    holder = subprocess.Popen(  # another submit's process, holding the folder
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "descriptor = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.flock(descriptor, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n",
         str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=r"another pipeline process is writing here "
                           r"\(another submit\); wait for it to finish"):  # fmt: skip
            submit.run(COMPETITION, csv_path=folder / "latest.csv",
                       pending_path=folder / "pending_submission.json")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert list(folder.iterdir()) == []


def test_odd_fields_from_the_server_and_a_settings_only_kaggle_json_list_fine(
    fake_kaggle, scores_folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integer or null state (proto3 JSON allows integer enums) failed every listing; a
    kaggle.json holding only settings (`kaggle config set`) was refused though the credentials
    are elsewhere."""
    import fake_kaggle as fake_module

    def odd(fake: object, request: dict) -> dict:
        item = FakeSubmission(
            ref=5,
            competition=COMPETITION,
            description="by hand",
            file_name="x.csv",
            content=b"x",
            date=datetime.datetime(2026, 3, 4),
        )
        return {"submissions": [item.to_json() | {"status": 1},
                                item.to_json() | {"ref": 6, "status": None, "description": 5}],
                "nextPageToken": ""}  # fmt: skip

    monkeypatch.setitem(fake_module.METHODS, "ListSubmissions", odd)
    (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json").write_text(
        json.dumps({"competition": COMPETITION})
    )
    assert main(["scores"]) == 0
    table = capsys.readouterr().out
    assert " 5 " in table and " 6 " in table


def test_git_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    """A non-ASCII file name in the tree crashed predict's manifest (after the CSV was written)
    under `LC_ALL=C PYTHONUTF8=0`: git's output was decoded as ASCII."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "notes_caf\u00e9.txt").write_text("x")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from pipeline.integrations.repository import changed_files\n"
        "assert sys.flags.utf8_mode == 0\nprint(len(changed_files(Path('.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr
