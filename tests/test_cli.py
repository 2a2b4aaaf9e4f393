"""`python -m pipeline <stage>` as a user runs it: one-line errors, non-zero exits, --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT


def _run_stage(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_over_budget_model_fails_fast_with_count_and_limit(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "model:\n  name: seed_resnet\n  base_width: 72\n  blocks: [4, 4, 3]\n  dropout: 0.17\ntrain:\n  device: cpu\n"
    )
    result = _run_stage(tmp_path, "train")
    _assert_one_line_error(result, "has 5,9")
    assert "over the budget model.max_params = 5,000,000" in result.stderr
    assert not (tmp_path / "models").exists()  # failed before any training or output


def test_unknown_param_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  epoch: 3\n")
    _assert_one_line_error(_run_stage(tmp_path, "train"), "unknown key 'train.epoch'")


def test_missing_input_tells_which_stage_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("prepare:\n  val: test_batch\n")
    _assert_one_line_error(
        _run_stage(tmp_path, "prepare"),
        "data/raw: no cifar-10-batches-py/ found; run the fetch stage first",
    )
    assert not (tmp_path / "data" / "prepared").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  epoch: 3\n")
    result = _run_stage(tmp_path, "train", "--debug")
    assert (
        result.returncode != 0 and "Traceback" in result.stderr and "PipelineError" in result.stderr
    )


@pytest.mark.parametrize(
    ("stage", "reads", "writes"),
    [
        ("fetch", "the files data.source names", "data/raw"),
        ("prepare", "data/raw", "data/prepared, metrics/data.json"),
        ("train", "data/prepared", "models/checkpoints"),
        ("predict", "data/prepared, models/final.pt", "submissions/latest.csv"),
    ],
)
def test_a_stages_help_says_what_it_reads_and_writes(
    stage: str, reads: str, writes: str, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.__main__ import main

    with pytest.raises(SystemExit):
        main([stage, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"Reads {reads}" in text and writes in text.split("; writes ", 1)[1]


def test_a_failed_stage_says_how_to_get_back_to_the_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run -S` may leave its edit in params.yaml, and DVC removed the stage's outputs
    (the git-tracked metrics files too) before running it."""
    from pipeline.__main__ import restore_hint

    monkeypatch.chdir(tmp_path)
    assert restore_hint(Path("params.yaml")) == ""  # not in git: nothing to say
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/predict.json").write_text("{}")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 200\n")
    subprocess.run(["git", "add", "-A"], check=True)
    git_user = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *git_user, "commit", "-qm", "run"], check=True)
    assert restore_hint(Path("params.yaml")) == ""  # as committed
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 5\n")
    (tmp_path / "metrics/predict.json").unlink()
    assert restore_hint(Path("params.yaml")) == (
        " (metrics/predict.json, params.yaml differ from the last commit: `git stash` puts those "
        "changes aside, `git stash pop` brings them back; then `dvc checkout` restores the "
        "committed run's outputs)"
    )
    subprocess.run(["git", *git_user, "stash", "-q"], check=True)  # as the hint says: all back
    assert (tmp_path / "metrics/predict.json").is_file()
    assert "epochs: 200" in (tmp_path / "params.yaml").read_text()
    assert restore_hint(Path("params.yaml")) == ""
    copy = tmp_path / ".dvc/tmp/exps/standalone/tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert restore_hint(Path("params.yaml")) == ""  # dvc exp run --temp: the workspace is intact


def test_a_dvc_failure_without_an_error_line_is_said_in_dvcs_words(tmp_path: Path) -> None:
    """A corrupted dvc.lock made `dvc status --json` fail with a snippet, and the message said
    only "dvc status failed: 5" (the snippet's line number)."""
    from pipeline.errors import PipelineError
    from pipeline.integrations.repository import stale_stages

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi > o\n    outs: [o]\n")
    (tmp_path / "dvc.lock").write_text('schema: "2.0"\nstages:\n  s:\n    cmd: [\n')
    with pytest.raises(PipelineError) as raised:
        stale_stages(tmp_path)
    message = str(raised.value)
    assert message.startswith("dvc status failed: './dvc.lock' is invalid. While parsing")
    assert "line 5, column 1" in message and "\n" not in message


def test_a_stage_run_from_a_sub_folder_writes_nothing_there(tmp_path: Path) -> None:
    """`python -m pipeline fetch --params ../params.yaml` in data/ wrote data/data/raw."""
    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text("data:\n  source: synthetic\n")
    (tmp_path / "data").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "fetch", "--params", "../params.yaml"],
        cwd=tmp_path / "data", env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        f"a stage runs from the project's root, where params.yaml and dvc.yaml are: `cd {tmp_path}`"
        in result.stderr
    )
    assert list((tmp_path / "data").iterdir()) == []


CHECKED = "metrics/params_checked.txt"


def _check(folder: Path, params_text: str, capsys: pytest.CaptureFixture) -> str:
    """`python -m pipeline check` in `folder` on `params_text`: its error line ("" if it passed)."""
    from pipeline.__main__ import main

    (folder / "params.yaml").write_text(params_text)
    code = main(["check"])
    said = capsys.readouterr().err
    errors = [line for line in said.splitlines() if line.startswith("error: ")]
    assert (code == 0) == (errors == []) and len(errors) <= 1, said
    return errors[0] if errors else ""


@pytest.mark.parametrize(
    "params_text, refusal",
    [
        # milestones past the epochs: train refuses them only after DVC removed its outputs
        ("train:\n  schedule: multistep\n  epochs: 3\n  milestones: [2, 5]\n",
         "train.milestones [2, 5] lie at or past the last epoch"),
        # the distilled student over budget: distill refuses it after select ran
        ("model:\n  name: seed_resnet\n  blocks: [1, 1, 1]\ndistill:\n  rounds: 1\n  student:\n"
         "    name: seed_resnet\n    base_width: 500\n    blocks: [1, 1, 1]\n",
         "has 74,554,510 trainable parameters"),
        ("model:\n  name: seed_resnet\n  base_width: 500\n  blocks: [1, 1, 1]\n",
         "has 74,554,510 trainable parameters"),
        ("train:\n  epochs: 2.5\n", "train.epochs must be an integer"),
        # prepare's own rule, on the data's sizes: prepare refused it after data/prepared went
        ("prepare:\n  val: holdout\n  holdout_images: 50000\n",
         "asks for 5000 images of class 0, but the training set has only 5000"),
        ("data:\n  source: synthetic\n  synthetic:\n    train_images: 1000\n"
         "prepare:\n  val: holdout\n  holdout_images: 995\n",
         "asks for 100 images of class 0, but the training set has only 100"),
        ("train:\n  device: cpu\n  nproc: 2\n  sync_batchnorm: true\n  drop_last: true\n",
         "train.sync_batchnorm: needs CUDA"),
    ],
)  # fmt: skip
def test_check_refuses_what_a_later_stage_would_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    params_text: str, refusal: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    error = _check(tmp_path, params_text, capsys)
    assert error.startswith("error: ") and refusal in error, error
    assert error.endswith("(checked before the other stages ran: their outputs are as they were)")
    assert not (tmp_path / CHECKED).exists()


def test_check_refuses_a_gpu_this_torch_cannot_use_before_any_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A Kaggle P100 with a torch built for newer GPUs: the stages would refuse it one by one."""
    from test_device import machine_with

    from pipeline.engine import gpu

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu, "this_machine", lambda: machine_with("Tesla P100", (6, 0)))
    error = _check(tmp_path, "train:\n  device: cpu\nselect:\n  device: cpu\n", capsys)
    assert "predict.device is 'auto'" in error and "Tesla P100" in error, error
    assert (
        _check(
            tmp_path,
            "train:\n  device: cpu\nselect:\n  device: cpu\npredict:\n  device: cpu\n",
            capsys,
        )
        == ""
    )


def test_check_passes_with_the_same_file_whatever_the_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """prepare depends on check's file: its md5 never changes, so a passed check reruns nothing."""
    from pipeline.stages.check import CHECKED_TEXT

    monkeypatch.chdir(tmp_path)
    assert _check(tmp_path, "train:\n  device: cpu\n", capsys) == ""
    first = (tmp_path / CHECKED).read_bytes()
    assert _check(tmp_path, "train:\n  device: cpu\n  epochs: 7\n  lr: 1e-3\n", capsys) == ""
    assert (tmp_path / CHECKED).read_bytes() == first == CHECKED_TEXT.encode()


def test_a_c_locale_terminal_gets_question_marks_not_a_traceback(tmp_path: Path) -> None:
    """LC_ALL=C (an HPC node, a bare container) makes stdout ASCII: doctor's "→" and the tables'
    "—" crashed the command with UnicodeEncodeError."""
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    env = {
        **os.environ, "PYTHONPATH": str(REPO_ROOT), "LC_ALL": "C", "LANG": "C",
        "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "",
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--profiles", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert b"train.device: auto ? cpu" in result.stdout  # "→", which ASCII cannot say


def test_check_stops_a_run_auto_would_put_on_this_cpu_for_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """train measured its first steps, then stopped the run, after DVC had removed its outputs;
    check times the recipe as doctor does (faked here: 10 s a step) before any stage runs."""
    from pipeline.engine import gpu, timing
    from pipeline.engine.timing import TrainingEstimate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu, "this_machine", lambda: gpu.Machine(False, (), (), None, None, False))
    timed = []

    def estimate(model, train, device, train_images, val_images):  # noqa: ANN001, ANN202
        timed.append((train.device, train_images, val_images))
        return TrainingEstimate(10.0, 100, train.epochs, 0.0)

    monkeypatch.setattr(timing, "estimate_training", estimate)
    error = _check(tmp_path, "train:\n  device: auto\n  epochs: 20\n", capsys)
    assert "no GPU found (train.device: auto), and on this CPU the run's 2000 steps" in error
    assert timed == [("cpu", 50_000, 10_000)]
    assert _check(tmp_path, "train:\n  device: auto\n  epochs: 2\n", capsys) == ""  # 33 min
    # train.max_steps ends the run early: 8 steps, not 2,000
    assert _check(tmp_path, "train:\n  device: auto\n  epochs: 20\n  max_steps: 8\n", capsys) == ""
    assert _check(tmp_path, "train:\n  device: cpu\n  epochs: 20\n", capsys) == ""  # asked for
    assert len(timed) == 3


def test_check_leaves_this_machine_out_for_a_training_that_will_not_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A run trained on a GPU machine, then predict.tta changed on a laptop: train will not
    rerun, so its CPU time (or GPUs) must not stop predict; once a train param changes, it does."""
    from pipeline.config.yaml_files import read_yaml
    from pipeline.engine import gpu, timing
    from pipeline.engine.timing import TrainingEstimate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu, "this_machine", lambda: gpu.Machine(False, (), (), None, None, False))
    monkeypatch.setattr(
        timing, "estimate_training",
        lambda model, train, *sizes: TrainingEstimate(10.0, 100, train.epochs, 0.0),
    )  # fmt: skip
    trained = "model:\n  name: airnet\ntrain:\n  device: auto\n  epochs: 200\ndistill:\n  teacher_max_params: 0\n"
    (tmp_path / "params.yaml").write_text(trained)
    values = read_yaml(tmp_path / "params.yaml")
    record = {"model": values["model"], "train": values["train"], "distill.teacher_max_params": 0}
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"train": {"params": {"params.yaml": record}}}})
    )
    assert _check(tmp_path, trained + "predict:\n  tta: flip\n", capsys) == ""
    error = _check(tmp_path, trained.replace("epochs: 200", "epochs: 300"), capsys)
    assert "no GPU found (train.device: auto)" in error
