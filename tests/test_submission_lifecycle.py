"""submit → scores → reproduce, with the real kaggle client against a fake Kaggle API on 127.0.0.1.

One tiny synthetic run (`dvc repro`, committed: conftest's `committed_run`) is shared; each
test works on a copy.
"""

from __future__ import annotations

import _thread
import base64
import dataclasses
import datetime
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import FAKE_KAGGLE_KEY, FAKE_KAGGLE_USERNAME
from fake_kaggle import FakeSubmission, verbose_kaggle_client
from projects import commit_all, copy_project, sh
from torchvision.datasets.utils import calculate_md5

from pipeline.__main__ import main
from pipeline.commands import submit
from pipeline.commands.scores import score_rows
from pipeline.errors import PipelineError
from pipeline.integrations import kaggle_client
from pipeline.records.history import FIELDS, find_rows, read_history
from pipeline.records.manifest import read_manifest

pytestmark = pytest.mark.slow
COMPETITION = "deep-learning-spring-2025-project-1"
SHORT_READ_TIMEOUT_SECONDS = 0.5  # a hung call gives up this fast in these tests
PENDING = "submissions/pending_submission.json"


@pytest.fixture
def project(committed_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the committed run with a local DVC remote (committed too), as the cwd."""
    copy = copy_project(committed_run, tmp_path / "project")
    sh(copy, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-storage"))
    commit_all(copy, "remote")
    monkeypatch.chdir(copy)
    return copy


def _run_id(project: Path) -> str:
    return json.loads((project / "metrics/predict.json").read_text())["run_id"]


def _error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


REAL_NOT_FOR_THE_COMPETITION = submit.not_for_the_competition  # before fake_kaggle patches it


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_synthetic_run_is_never_submitted_even_with_force(
    project: Path,
    fake_kaggle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    force: list[str],
) -> None:
    monkeypatch.setattr(submit, "not_for_the_competition", REAL_NOT_FOR_THE_COMPETITION)
    assert main(["submit", *force]) == 1
    assert _error_line(capsys) == (
        "error: submit refused: submissions/latest.csv: run "
        f"{_run_id(project)} trained on synthetic data (data.source: synthetic, the demo); put "
        "the competition's zip in data/input/, set data.source: auto and run `dvc repro`"
    )
    assert fake_kaggle.submissions == [] and fake_kaggle.calls == []
    assert not (project / "submissions/history.csv").exists()


def test_a_csv_that_is_not_the_competitions_ids_is_refused_with_the_counts(
    project: Path, fake_kaggle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """data.source local with a stand-in custom test (200 images): refused with the counts."""
    summary = read_manifest(project / "submissions/latest.json")
    assert summary.data_source == "synthetic"
    as_local = dataclasses.replace(summary, data_source="local")
    ids = list(range(200))
    problem = REAL_NOT_FOR_THE_COMPETITION(as_local, Path("latest.csv"), ids)
    assert problem == (
        "latest.csv: 200 rows with 0 ids outside 0–9999; the competition expects 10000 rows, ids "
        "0–9999: was data/raw's custom test pickle the competition's?"
    )
    ids = [*range(9999), 10_000]
    assert "10000 rows with 1 ids outside" in REAL_NOT_FOR_THE_COMPETITION(as_local, Path("x"), ids)
    assert REAL_NOT_FOR_THE_COMPETITION(as_local, Path("x"), list(range(10_000))) is None


def test_predict_leaves_latest_json_and_submit_records_the_runs_own_copy(
    project: Path, fake_kaggle
) -> None:
    """predict's manifest is submissions/latest.json, a DVC output that a run's commit (an
    experiment's too) carries; submit keeps the submitted run's copy as <run_id>.json."""
    run_id = _run_id(project)
    manifest = project / f"submissions/{run_id}.json"
    assert not manifest.exists()
    assert main(["submit", "-m", "applied"]) == 0
    assert manifest.read_bytes() == (project / "submissions/latest.json").read_bytes()
    assert [sent.file_name for sent in fake_kaggle.submissions] == [f"{run_id}.csv"]


def test_submit_sends_the_csv_pushes_the_run_and_records_it(
    project: Path, fake_kaggle, capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    kaggle_json = project.parent / "home/.kaggle/kaggle.json"
    kaggle_json.write_text(json.dumps({"username": "pipeline-tester", "key": FAKE_KAGGLE_KEY}))
    kaggle_json.chmod(0o600)
    assert main(["submit", "-m", "tiny seed run"]) == 0
    run_id, csv_md5 = _run_id(project), calculate_md5(project / "submissions/latest.csv")
    commit = sh(project, "git", "rev-parse", "HEAD").stdout.strip()

    [sent] = fake_kaggle.submissions
    assert sent.md5 == csv_md5 and sent.file_name == f"{run_id}.csv"
    assert sent.description == f"run {run_id} @ {commit[:7]} | tiny seed run"
    assert sent.competition == "deep-learning-spring-2025-project-1"
    assert fake_kaggle.calls == [
        "ListSubmissions",
        "StartSubmissionUpload",
        "Upload",
        "CreateSubmission",
    ]

    [row] = read_history(project / "submissions/history.csv")
    assert row["run_id"] == run_id and row["commit"] == commit and row["csv_md5"] == csv_md5
    assert row["kaggle_ref"] == str(sent.ref) and row["message"] == sent.description
    assert row["forced"] == "" and row["submitted_utc"].endswith("+00:00")
    # dvc push put the run's outputs in the remote: latest.csv's object is there
    assert (tmp_path / "dvc-storage/files/md5" / csv_md5[:2] / csv_md5[2:]).is_file()
    assert sh(project, "dvc", "status", "--cloud").stdout.strip().endswith("are in sync.")

    # the key planted in the environment (for dvc repro too) and in kaggle.json reaches no
    # output: no file the run or submit wrote (data, models, metrics, manifests, history,
    # dvc.lock, DVC's cache and the remote), and nothing printed
    captured = capfd.readouterr()  # file descriptors: dvc push's own output too
    assert FAKE_KAGGLE_KEY not in captured.out + captured.err
    key = FAKE_KAGGLE_KEY.encode()
    written = [p for p in [*project.rglob("*"), *(tmp_path / "dvc-storage").rglob("*")]
               if p.is_file() and ".git" not in p.relative_to(tmp_path).parts]  # fmt: skip
    assert len(written) > 40 and not [p for p in written if key in p.read_bytes()]


def test_with_dvcs_symlink_cache_the_linked_csv_is_sent_and_a_link_elsewhere_is_not(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    sh(project, "dvc", "config", "--local", "cache.type", "symlink")
    sh(project, "dvc", "checkout", "--relink", "submissions/latest.csv")
    latest = project / "submissions/latest.csv"
    assert latest.is_symlink()  # into .dvc/cache: what DVC makes of an output with this cache type
    assert main(["submit", "--no-push", "-m", "linked"]) == 0
    [sent] = fake_kaggle.submissions
    assert sent.md5 == calculate_md5(latest)

    # the same bytes behind a link out of the cache are not the file predict wrote
    elsewhere = project.parent / "copy.csv"
    elsewhere.write_bytes(latest.read_bytes())
    latest.unlink()
    latest.symlink_to(elsewhere)
    assert main(["submit", "--no-push", "--force", "-m", "elsewhere"]) == 1
    assert (
        "a symbolic link to a file that is not an object of this project's DVC cache"
        in _error_line(capsys)
    )
    assert len(fake_kaggle.submissions) == 1


def test_rejected_credentials_are_one_clear_line_and_nothing_is_recorded(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-0000")
    assert main(["submit"]) == 1
    line = _error_line(capsys)
    assert "rejected the credentials (HTTP 401)" in line and "wrong-key-0000" not in line
    assert not (project / "submissions/history.csv").exists()
    assert fake_kaggle.submissions == []
    assert not (project.parent / "dvc-storage").exists()  # refused before any dvc push


def test_no_credentials_at_all_is_one_line_naming_where_to_put_them(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    assert main(["scores"]) == 1
    assert "scores: no Kaggle credentials found: put kaggle.json in ~/.kaggle/" in _error_line(
        capsys
    )
    assert fake_kaggle.calls == []


def test_transient_server_errors_are_retried_without_submitting_twice(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    fake_kaggle.fail_next["StartSubmissionUpload"].append((503, "before"))
    fake_kaggle.fail_next["Upload"].append((503, "before"))
    fake_kaggle.fail_next["CreateSubmission"].append((502, "after"))  # recorded, then 502
    assert main(["submit", "--no-push"]) == 0
    [sent] = fake_kaggle.submissions  # the retry found it instead of submitting again
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref)
    # two retries; the 502 needs none: the submission it hid is found in Kaggle's list
    assert capsys.readouterr().err.count("retrying") == 2


def test_a_submission_recorded_on_the_last_failing_attempt_is_found_not_lost(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    attempts = kaggle_client.ATTEMPTS
    fake_kaggle.fail_next["StartSubmissionUpload"].extend([(503, "before")] * (attempts - 1))
    fake_kaggle.fail_next["CreateSubmission"].append((504, "after"))  # on the last attempt
    assert main(["submit", "--no-push"]) == 0
    [sent] = fake_kaggle.submissions
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref)


def test_a_description_kaggle_cut_short_is_still_found_after_a_5xx_not_sent_twice(
    project: Path, fake_kaggle
) -> None:
    """Kaggle stores the submission with its description shortened, then answers 502: the
    retry finds it by the run its description starts with (and its file name)."""
    fake_kaggle.description_limit = 30  # "run <run_id> @ <commit> | …" keeps its run
    fake_kaggle.fail_next["CreateSubmission"].append((502, "after"))
    assert main(["submit", "--no-push", "-m", "a long note " * 40]) == 0
    [sent] = fake_kaggle.submissions
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref) and row["message"].endswith("a long note")
    assert sent.description == row["message"][:30] != row["message"]
    assert sent.description.startswith(f"run {_run_id(project)} @ ")


def test_a_message_kaggle_or_history_could_not_keep_is_refused_before_sending(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    """A 2,001-character -m was sent, and history.csv then refused its own row."""
    assert main(["submit", "--no-push", "-m", "x" * 2001]) == 1
    assert "the -m message is 2,001 characters long; say it in at most 500" in _error_line(capsys)
    assert fake_kaggle.calls == [] and not (project / "submissions/history.csv").exists()
    assert main(["submit", "--no-push", "-m", "two\nlines  and   spaces"]) == 0
    [row] = read_history(project / "submissions/history.csv")
    assert row["message"].endswith(" | two lines and spaces")
    assert main(["scores"]) == 0  # the history it wrote reads back


def test_a_lasting_server_error_gives_up_with_the_reason(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    fake_kaggle.fail_next["StartSubmissionUpload"].extend(
        [(500, "before")] * kaggle_client.ATTEMPTS
    )
    assert main(["submit", "--no-push"]) == 1
    assert f"failed after {kaggle_client.ATTEMPTS} attempts: HTTP 500" in _error_line(capsys)
    assert not (project / "submissions/history.csv").exists()


def test_the_same_csv_is_refused_a_second_time_unless_forced(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    assert main(["submit", "--no-push"]) == 0
    assert main(["submit", "--no-push"]) == 1
    assert "was already submitted on" in _error_line(capsys)
    assert len(fake_kaggle.submissions) == 1
    assert main(["submit", "--no-push", "--force"]) == 0
    rows = read_history(project / "submissions/history.csv")
    assert [row["forced"] for row in rows] == ["", "duplicate"]
    assert len(fake_kaggle.submissions) == 2


def test_stale_outputs_dirty_tree_bad_csv_and_no_remote_are_refused(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.05", "lr: 0.04"))
    assert main(["submit"]) == 1
    line = _error_line(capsys)
    assert "outputs are stale" in line and "train" in line and "params.yaml" in line
    sh(project, "git", "checkout", "--", "params.yaml")

    (project / "pipeline/new_module.py").write_text("# not committed yet\n")
    assert main(["submit"]) == 1
    assert "the git tree differs from the commit (pipeline/new_module.py)" in _error_line(capsys)
    (project / "pipeline/new_module.py").unlink()

    latest = project / "submissions/latest.csv"
    original = latest.read_text()
    latest.write_text(original.replace("ID,Labels", "id,label"))
    assert main(["submit"]) == 1
    assert "header must be ID,Labels" in _error_line(capsys)
    first_label = original.splitlines()[1].split(",")
    changed = f"{first_label[0]},{(int(first_label[1]) + 1) % 10}"
    latest.write_text(original.replace(original.splitlines()[1], changed, 1))
    assert main(["submit"]) == 1
    assert "cannot be traced" in _error_line(capsys)
    latest.write_text(original)

    sh(project, "dvc", "remote", "remove", "storage")
    commit_all(project, "no remote")
    assert main(["submit"]) == 1
    assert "no default DVC remote" in _error_line(capsys)
    assert fake_kaggle.submissions == [] and not (project / "submissions/history.csv").exists()


def test_scores_joins_kaggle_with_history_and_manifests(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["submit", "--no-push", "-m", "first"]) == 0
    fake_kaggle.submissions[0].status = "COMPLETE"
    fake_kaggle.submissions[0].public_score = "0.84210"
    fake_kaggle.submissions[0].private_score = "0.83950"
    # one made by hand on the website: no run_id, no history row
    token = fake_kaggle.start_submission_upload({"fileName": "hand.csv", "contentLength": 3})[
        "token"
    ]
    fake_kaggle.upload(token, b"x\n")
    fake_kaggle.create_submission(
        {"competitionName": "deep-learning-spring-2025-project-1", "blobFileTokens": token,
         "submissionDescription": f"better than run {_run_id(project)} @ abc1234"}
    )  # fmt: skip
    capsys.readouterr()
    assert main(["scores"]) == 0
    table = capsys.readouterr().out
    run_id = _run_id(project)
    assert run_id in table and "0.84210" in table and "0.83950" in table and "seed_resnet" in table

    monkeypatch.setattr(kaggle_client, "LIST_PAGE_SIZE", 1)  # every page read, one by one
    api = kaggle_client.connect("scores")
    rows = score_rows(
        kaggle_client.list_submissions(api, "deep-learning-spring-2025-project-1"),
        read_history(project / "submissions/history.csv"),
        "deep-learning-spring-2025-project-1",
    )
    by_hand, ours = rows  # newest first
    manifest = json.loads((project / f"submissions/{run_id}.json").read_text())
    assert ours["run_id"] == run_id and ours["public"] == "0.84210" and ours["private"] == "0.83950"
    assert ours["status"] == "complete" and ours["model"] == "seed_resnet"
    assert ours["params"] == f"{manifest['model_params']:,}" and ours["tta"] == manifest["tta"]
    assert ours["val_accuracy"] == f"{manifest['val_accuracy']:.4f}"
    # it only mentions a run: not that run's submission
    assert by_hand["run_id"] == "—" and by_hand["status"] == "pending"


def test_a_submission_is_a_runs_by_submits_marks_only() -> None:
    from pipeline.integrations.kaggle_marks import run_of_submission

    run = "0123456789ab"
    assert run_of_submission(f"run {run} @ abcdef0 | try 3", "x.csv") == run
    assert run_of_submission(f"run {run} @ abc", "x.csv") == run  # cut short by Kaggle
    assert run_of_submission(f"try 3 | run {run} @ abcdef0", "x.csv") == run  # older submits
    assert run_of_submission("", f"{run}.csv") == run  # its upload, or predict's copy
    for mention in (f"better than run {run}", f"run {run} was better", f"xrun {run} @ a"):
        assert run_of_submission(mention, "latest.csv") is None, mention
    assert run_of_submission(None, None) is None
    # an older description whose own message began like a new one: the upload's name decides
    other = "bbbbbbbbbbbb"
    assert run_of_submission(f"run {other} @ x | note | run {run} @ abc1234", f"{run}.csv") == run


def test_history_lookup_by_run_id_md5_prefix_or_kaggle_ref() -> None:
    rows = [
        dict.fromkeys(FIELDS, "") | {"run_id": "abc123def456", "csv_md5": "ffee" * 8, "kaggle_ref": "48000001"},
        dict.fromkeys(FIELDS, "") | {"run_id": "abd000000000", "csv_md5": "0123" * 8, "kaggle_ref": "48000002"},
    ]  # fmt: skip
    assert find_rows(rows, "abc1") == [rows[0]]
    assert find_rows(rows, "FFEE") == [rows[0]]
    assert find_rows(rows, "48000002") == [rows[1]]
    assert find_rows(rows, "ab") == []  # too short to mean one run
    assert len(find_rows(rows, "ab00")) == 0 and len(find_rows(rows, "abd0")) == 1


def _clone(source: Path, destination: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(source), str(destination)], check=True)
    return destination


def test_submit_then_reproduce_in_a_fresh_clone_gives_the_identical_csv(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert main(["submit", "-m", "to reproduce"]) == 0
    run_id, csv_md5 = _run_id(project), calculate_md5(project / "submissions/latest.csv")
    commit_all(project, f"submit run {run_id}")  # history.csv, as submit says to
    ref = read_history(project / "submissions/history.csv")[0]["kaggle_ref"]

    clone = _clone(project, tmp_path / "clone")
    monkeypatch.chdir(clone)
    capsys.readouterr()
    assert main(["reproduce", run_id[:6], "--into", str(tmp_path / "pulled")]) == 0
    err = capsys.readouterr().err
    assert "identical" in err and "restored with dvc pull" in err
    assert calculate_md5(tmp_path / "pulled/submissions/latest.csv") == csv_md5

    # the remote lacks the outputs (config.local points it at an empty folder), and so does
    # this second clone's cache: dvc repro recomputes them
    second = _clone(project, tmp_path / "second-clone")
    monkeypatch.chdir(second)
    sh(second, "dvc", "remote", "modify", "--local", "storage", "url", str(tmp_path / "empty"))
    assert main(["reproduce", ref, "--into", str(tmp_path / "recomputed")]) == 0
    err = capsys.readouterr().err
    assert "identical" in err and "recomputed with dvc repro" in err
    assert calculate_md5(tmp_path / "recomputed/submissions/latest.csv") == csv_md5
    # on CPU the retrained weights are bit-identical, so checkpoints and run_id are the same
    [differing] = [line for line in err.splitlines() if "differ from the commit's" in line]
    assert "metrics/train/metrics.json" in differing  # its timings; nothing else
    assert "models/" not in differing and _run_id(tmp_path / "recomputed") == run_id

    # a remote that cannot be reached (here: no dvc-s3 installed) stops without recomputing
    third = _clone(project, tmp_path / "third-clone")
    monkeypatch.chdir(third)
    sh(third, "dvc", "remote", "modify", "--local", "storage", "url", "s3://no-such-bucket/x")
    assert main(["reproduce", ref, "--into", str(tmp_path / "unreachable")]) == 1
    assert "the DVC remote could not be checked" in _error_line(capsys)
    assert not (tmp_path / "unreachable/models/checkpoints").exists()

    # a history row whose md5 the commit cannot give: DIFFERENT, with what differs and why
    monkeypatch.chdir(clone)
    history = clone / "submissions/history.csv"
    history.write_text(history.read_text().replace(csv_md5, "0" * 32))
    assert main(["reproduce", run_id, "--into", str(tmp_path / "differs")]) == 1
    err = capsys.readouterr().err
    assert "DIFFERENT" in err and f"reproduced {csv_md5}" in err
    assert "the commit's dvc.lock records submissions/latest.csv md5" in err
    assert "may have been edited" in err and "why:" not in err  # pulled: no kernel excuses


def test_a_damaged_history_row_is_named(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text(",".join(FIELDS) + "\n2026-11-26T00:00:00+00:00,abc123def456\n")
    with pytest.raises(PipelineError, match=r"history.csv: line 2 does not have the 8 fields"):
        read_history(history)


def test_without_a_remote_submit_says_how_to_add_one_and_reproduce_uses_the_cache(
    committed_run: Path, fake_kaggle, capsys: pytest.CaptureFixture, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project = copy_project(committed_run, tmp_path / "project")
    monkeypatch.chdir(project)
    assert main(["submit"]) == 1
    assert "no default DVC remote in .dvc/config" in _error_line(capsys)
    assert main(["submit", "--no-push"]) == 0
    commit_all(project, "submitted")
    run_id = _run_id(project)

    assert main(["reproduce", run_id, "--into", str(tmp_path / "from-cache")]) == 0
    assert "identical" in capsys.readouterr().err
    assert main(["reproduce", run_id, "--into", str(tmp_path / "from-cache")]) == 1  # again
    assert f"`git worktree remove --force {tmp_path / 'from-cache'}`" in _error_line(capsys)
    (tmp_path / "mine").mkdir()  # a folder of the user's: never `git worktree remove --force` it
    assert main(["reproduce", run_id, "--into", str(tmp_path / "mine")]) == 1
    line = _error_line(capsys)
    assert "is not a worktree of this repository (nothing was changed)" in line
    assert "worktree remove" not in line
    assert main(["reproduce", run_id, "--into", "submissions"]) == 1
    assert f"{project / 'submissions'}: inside this project" in _error_line(capsys)
    # a damaged object in the cache: restored, yet not the bytes the commit's dvc.lock records
    recorded = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["predict"]["outs"]
    md5 = next(out["md5"] for out in recorded if out["path"] == "submissions/latest.csv")
    cached = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    text = cached.read_text().rstrip()
    cached.write_text(text[:-1] + ("2" if text.endswith("1") else "1") + "\n")  # one label
    assert main(["reproduce", run_id, "--into", str(tmp_path / "damaged")]) == 1
    printed = " ".join(capsys.readouterr().err.split())
    assert "DIFFERENT" in printed and "DVC's cache or remote holds a damaged copy" in printed
    assert md5[2:] in printed.replace(" ", "")  # the object to delete

    clone = _clone(project, tmp_path / "clone")  # no cache, no remote: nothing to restore from
    monkeypatch.chdir(clone)
    assert main(["reproduce", run_id, "--into", str(tmp_path / "nothing")]) == 1
    line = _error_line(capsys)
    assert "names no DVC remote" in line and "dvc remote add -d storage" in line


def test_a_kaggle_json_others_can_read_gets_a_warning(
    fake_kaggle, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kaggle_json = tmp_path / "home/.kaggle/kaggle.json"
    kaggle_json.write_text(json.dumps({"username": "pipeline-tester", "key": FAKE_KAGGLE_KEY}))
    kaggle_json.chmod(0o644)
    kaggle_client.connect("scores")
    err = capsys.readouterr().err
    assert f"warning: {kaggle_json} (your Kaggle key) can be read by other users" in err
    assert f"chmod 600 {kaggle_json}" in err and FAKE_KAGGLE_KEY not in err
    kaggle_json.chmod(0o600)
    kaggle_client.connect("scores")
    assert "warning" not in capsys.readouterr().err


# --- what CI environments and real networks bring ---------------------------------------------


def test_a_verbose_client_and_an_echoing_server_never_print_the_key(
    project: Path, fake_kaggle, capfd: pytest.CaptureFixture
) -> None:
    """The planted-key scan: VERBOSE=1 and VERBOSE_OUTPUT=yes (as CI sets them) make the client
    print every request, Authorization header included; the server echoes that header in its
    errors, which we print in retry lines and in the one-line error."""
    fake_kaggle.echo_authorization = True
    with verbose_kaggle_client():
        fake_kaggle.fail_next["ListSubmissions"].append((503, "before"))
        assert main(["scores"]) == 0
        fake_kaggle.fail_next["CreateSubmission"].append((500, "before"))  # retried
        assert main(["submit", "--no-push"]) == 0
        fake_kaggle.fail_next["ListSubmissions"].extend([(500, "before")] * kaggle_client.ATTEMPTS)
        assert main(["submit", "--no-push", "--force"]) == 1
        assert main(["scores"]) == 0
    captured = capfd.readouterr()  # file descriptors: what the client prints itself too
    printed = captured.out + captured.err
    basic = base64.b64encode(f"{FAKE_KAGGLE_USERNAME}:{FAKE_KAGGLE_KEY}".encode()).decode()
    for secret in (FAKE_KAGGLE_KEY, basic, fake_kaggle.expected_auth):
        assert secret not in printed
    assert "Authorization: Basic [redacted]" in printed  # the echoes were printed, redacted
    assert len(fake_kaggle.submissions) == 1


def test_submit_against_a_server_that_never_answers_fails_within_the_timeouts(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT_SECONDS)
    fake_kaggle.unresponsive = True
    started = time.monotonic()
    assert main(["submit", "--no-push"]) == 1
    assert time.monotonic() - started < 30  # ATTEMPTS × 0.5 s, not forever
    line = _error_line(capsys)
    assert f"Kaggle did not answer within {SHORT_READ_TIMEOUT_SECONDS:g} s" in line
    assert not (project / "submissions/history.csv").exists() and not (project / PENDING).exists()


def test_a_submission_kaggle_recorded_but_never_answered_is_found_not_sent_twice(
    project: Path, fake_kaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT_SECONDS)
    fake_kaggle.hang_next["CreateSubmission"].append("after")  # recorded, then no answer
    started = time.monotonic()
    assert main(["submit", "--no-push"]) == 0
    assert time.monotonic() - started < 30
    [sent] = fake_kaggle.submissions
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref) and fake_kaggle.calls.count("CreateSubmission") == 1
    assert not (project / PENDING).exists()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt, as in a terminal. A shell's background job, and
    some CI runners, start with SIGINT ignored, and `_thread.interrupt_main` then does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupted_submit_is_found_on_the_rerun_not_sent_twice(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kaggle records the submission, the answer never comes, the user presses Ctrl-C (or CI
    kills the job): the rerun must find the submission instead of sending it again."""
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", 2.0)
    fake_kaggle.hang_next["CreateSubmission"].append("after")
    fake_kaggle.on_hang = _thread.interrupt_main  # KeyboardInterrupt in the waiting client
    assert main(["submit", "--no-push", "-m", "interrupted"]) == 130
    assert "the next `submit` looks for this submission" in capsys.readouterr().err
    assert len(fake_kaggle.submissions) == 1 and (project / PENDING).exists()
    assert not (project / "submissions/history.csv").exists()

    fake_kaggle.on_hang = None
    assert main(["submit", "--no-push", "-m", "interrupted"]) == 0
    err = capsys.readouterr().err
    assert "did reach Kaggle" in err and "not sending it again" in err
    [sent] = fake_kaggle.submissions
    assert fake_kaggle.calls.count("CreateSubmission") == 1
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref) and row["message"] == sent.description
    assert not (project / PENDING).exists()
    assert main(["submit", "--no-push"]) == 1  # and now it is an ordinary duplicate
    assert "was already submitted on" in _error_line(capsys)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupted_submit_that_never_arrived_is_sent_on_the_rerun(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle_client, "READ_TIMEOUT_SECONDS", 2.0)
    fake_kaggle.hang_next["CreateSubmission"].append("before")  # killed before Kaggle records
    fake_kaggle.on_hang = _thread.interrupt_main
    assert main(["submit", "--no-push"]) == 130
    assert fake_kaggle.submissions == [] and (project / PENDING).exists()
    fake_kaggle.on_hang = None
    assert main(["submit", "--no-push"]) == 0
    assert "that got no answer never arrived" in capsys.readouterr().err
    [sent] = fake_kaggle.submissions
    [row] = read_history(project / "submissions/history.csv")
    assert row["kaggle_ref"] == str(sent.ref) and not (project / PENDING).exists()


def test_a_run_at_chance_level_is_refused_unless_forced(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    manifest_path = project / "submissions/latest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"val_accuracy": 0.1}))  # a NaN-loss run's
    assert main(["submit", "--no-push"]) == 1
    line = _error_line(capsys)
    assert "validation accuracy 0.1000, at chance" in line and "(--force submits anyway)" in line
    assert fake_kaggle.calls == []  # refused before any network call
    assert main(["submit", "--no-push", "--force"]) == 0
    [row] = read_history(project / "submissions/history.csv")
    # latest.json is predict's DVC output: edited by hand here, it makes predict stale too
    assert row["forced"] == "chance;stale"


def test_the_daily_limit_refuses_before_uploading_and_says_when_it_resets(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # the list's UTC
    for ref, date in ((1, now), (2, now), (3, now - datetime.timedelta(days=1))):
        fake_kaggle.submissions.append(FakeSubmission(
            ref=ref, competition=COMPETITION, description=f"earlier {ref}", file_name="x.csv",
            content=b"x", date=date, status="COMPLETE",
        ))  # fmt: skip
    assert main(["submit", "--no-push", "--daily-limit", "2"]) == 1
    line = _error_line(capsys)
    tomorrow = (now + datetime.timedelta(days=1)).date()
    assert f"2 submissions to '{COMPETITION}' today, the daily limit of 2" in line
    assert f"(Kaggle's day is UTC); it resets at {tomorrow} 00:00 UTC" in line
    assert "--daily-limit N" in line and fake_kaggle.calls == ["ListSubmissions"]
    assert main(["submit", "--no-push", "--daily-limit", "3"]) == 0
    assert len(fake_kaggle.submissions) == 4


def test_submit_wait_prints_the_public_score_beside_the_run_id(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "MIN_POLL_INTERVAL_SECONDS", 0.0)
    fake_kaggle.score_after_polls = 3  # pending, pending, then scored
    assert main(["submit", "--no-push", "--wait", "--poll-interval", "0.01"]) == 0
    run_id, [sent] = _run_id(project), fake_kaggle.submissions
    err = capsys.readouterr().err
    assert f"submit: run {run_id}: public score 0.91230 (Kaggle ref {sent.ref})" in err
    assert fake_kaggle.calls.count("GetSubmission") == 3
    assert main(["scores"]) == 0
    [listed] = [line for line in capsys.readouterr().out.splitlines() if run_id in line]
    assert "0.91230" in listed and "complete" in listed

    fake_kaggle.score_after_polls = None  # never scored: the wait is bounded
    args = ["submit", "--no-push", "--force", "--wait", "--wait-limit", "0.2"]
    assert main([*args, "--poll-interval", "0.01"]) == 1
    line = _error_line(capsys)
    assert "is still pending after 0.2 s (--wait-limit); it is recorded" in line
    assert len(read_history(project / "submissions/history.csv")) == 2
    monkeypatch.setattr(submit, "MIN_POLL_INTERVAL_SECONDS", 5.0)
    assert main([*args, "--poll-interval", "1"]) == 1
    assert "--poll-interval 1 is under 5 s" in _error_line(capsys)


def test_kaggle_text_in_rich_markup_is_printed_as_text(
    project: Path, fake_kaggle, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public score holding `[/x]` crashed `submit --wait` (and `[bold]` restyled it)."""
    monkeypatch.setattr(submit, "MIN_POLL_INTERVAL_SECONDS", 0.0)
    fake_kaggle.score_after_polls = 1
    fake_kaggle.public_score_to_give = "[bold]0.9[/x]"
    assert main(["submit", "--no-push", "--wait", "--poll-interval", "0.01"]) == 0
    assert "public score [bold]0.9[/x] (Kaggle ref" in capsys.readouterr().err


@pytest.mark.parametrize("slug", ["", "comp[/x]", "-flag", "a slug", "a/b"])
def test_a_competition_that_is_not_a_kaggle_slug_is_refused_as_a_param(
    tmp_path: Path, capsys: pytest.CaptureFixture, slug: str
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  competition: '{slug}'\n")
    assert main(["scores", "--params", str(params)]) == 1
    assert "data.competition must be a Kaggle competition's slug" in _error_line(capsys)
