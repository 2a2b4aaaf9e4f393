"""A newcomer's run: `dvc repro` on synthetic data in a fresh copy of the repository."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from projects import (
    TINY_PARAMS,
    commit_all,
    copy_project,
    copy_repo,
    new_project,
    override,
    run_tool,
    sh,
)

from pipeline.records.submission_csv import validate_submission


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(
    tiny_run: tuple[Path, str], tmp_path: Path
) -> None:
    finished, first_output = tiny_run
    project = copy_project(finished, tmp_path / "project")
    stages = ("check", "fetch", "prepare", "train", "select", "distill", "predict")
    assert [line for line in first_output.splitlines() if line.startswith("Running stage")] == [
        f"Running stage '{stage}':" for stage in stages
    ]
    # a normal run warns of nothing (DVC of an empty models/distill, train of a CPU it was told
    # to use), and select's candidates are one short table, not a line each
    assert "warning" not in first_output.lower(), first_output
    assert "select: the best 5 of 9 candidates" in first_output  # 3 checkpoints × 3 TTAs
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)

    ids = np.arange(TINY_PARAMS["data"]["synthetic"]["custom_test_images"])
    validate_submission(project / "submissions/latest.csv", ids)
    selected = json.loads((project / "metrics/select.json").read_text())
    assert selected["val_accuracy"] > 0.5  # chance is 0.1
    train_metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    assert train_metrics["model_params"] == selected["model_params"] == 19_954
    dataset = json.loads((project / "data/prepared/dataset.json").read_text())
    assert dataset["train_per_class"]["truck"] == 100

    run = json.loads((project / "metrics/predict.json").read_text())["run_id"]
    manifest = json.loads((project / "submissions/latest.json").read_text())
    head = sh(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert manifest["git"] == {
        "commit": head,
        "dirty": False,
    }  # dvc.lock, rewritten by the run, is not dirt
    assert manifest["params"]["train"]["epochs"] == 6 and manifest["dvc_lock_sha256"]
    assert (project / f"submissions/{run}.csv").read_bytes() == (
        project / "submissions/latest.csv"
    ).read_bytes()
    stamp = (project / "submissions/latest.csv").stat().st_mtime_ns
    second = sh(project, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert (project / "submissions/latest.csv").stat().st_mtime_ns == stamp
    shown = sh(project, "dvc", "metrics", "show", "--json")
    assert "val_accuracy" in shown.stdout
    table = sh(project, "dvc", "metrics", "show").stdout.splitlines()  # one short headline
    assert len(table) == 2 and max(map(len, table)) <= 100, table
    assert table[0].split() == ["Path", "model_params", "run_id", "tta", "val_accuracy"]
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)["data"]
    for path in (
        "metrics/val_predictions.csv",
        "metrics/val_per_class.csv",
        "metrics/select_candidates.csv",
    ):
        assert any(path in name for name in plots), (path, list(plots))


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, refusal",
    [
        ("train.epochs=abc", "train.epochs must be an integer, found 'abc'"),
        # over model.max_params: train would refuse it once its outputs were gone
        ("model.base_width=900", "has 241,478,110 trainable parameters"),
        ("predict.tta=sideways", "predict.tta"),  # the last stage's own section
    ],
)
def test_a_refused_param_removes_no_output_of_the_committed_run(
    tiny_run: tuple[Path, str], tmp_path: Path, setting: str, refusal: str
) -> None:
    """DVC removes a stage's outputs before it runs it: the check stage, first, refuses what a
    later stage would, so `dvc exp run -S` with a typo costs no checkpoint or training curve."""
    project = copy_project(tiny_run[0], tmp_path / "project")
    commit_all(project, "run")
    outputs = sorted(project.glob("models/**/*.pt")) + sorted(project.glob("metrics/**/*.*"))
    stamps = {path: path.stat().st_mtime_ns for path in outputs}
    run = run_tool(project, "dvc", "exp", "run", "-S", setting)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and refusal in errors[0], run.stderr
    assert errors[0].endswith(
        "(checked before the other stages ran: their outputs are as they were)"
    )
    assert "Running stage 'check'" in run.stdout and "Running stage 'train'" not in run.stdout
    changed = sh(project, "git", "status", "--porcelain").stdout.split("\n")
    # check's own fixed-text file is DVC's to remove; nothing a run computed is touched
    assert {line[3:] for line in changed if line} <= {"params.yaml", "metrics/params_checked.txt"}
    assert {path: path.stat().st_mtime_ns for path in outputs if path.exists()} == {
        path: stamp for path, stamp in stamps.items() if path.name != "params_checked.txt"
    }
    sh(project, "git", "checkout", "params.yaml")
    again = sh(project, "dvc", "repro")
    assert "Running stage 'train'" not in again.stdout and "Running stage 'check'" in again.stdout
    assert sh(project, "git", "status", "--porcelain").stdout == ""


SMOKE_DATA = {  # ten images of each class to train on: the real models are slow on a CPU
    "source": "synthetic",
    "synthetic": {"train_images": 100, "val_images": 50, "custom_test_images": 30},
}
PROFILE_MODEL_PARAMS = {"fast": 1_971_328, "default": 4_836_736, "cpu": 497_216}


@pytest.mark.slow
def test_dvc_repro_runs_each_profile_smoke_sized(tmp_path: Path) -> None:
    """Each profile's own model and recipe (EMA, TrivialAugment, ...) for one short epoch."""
    project = new_project(tmp_path, "fast", {"data": SMOKE_DATA})
    for profile, model_params in PROFILE_MODEL_PARAMS.items():
        sh(project, sys.executable, "-m", "pipeline", "profile", profile)
        smoke = {"device": "cpu", "epochs": 1, "batch_size": 64, "checkpoint_every": 1}
        override(project, {"data": SMOKE_DATA, "train": smoke})
        run = sh(project, "dvc", "repro")
        assert "Running stage 'train'" in run.stdout and "Running stage 'predict'" in run.stdout
        assert (
            json.loads((project / "metrics/train/metrics.json").read_text())["model_params"]
            == model_params
        ), profile
        validate_submission(project / "submissions/latest.csv", np.arange(30))
        selected = json.loads((project / "metrics/select.json").read_text())
        assert selected["weights"] in ("raw", "ema") and selected["model_params"] == model_params
        if profile == "default":  # EMA on: both weight sets were candidates
            candidates = (project / "metrics/select_candidates.csv").read_text()
            assert ",raw," in candidates and ",ema," in candidates
        predicted = json.loads((project / "metrics/predict.json").read_text())
        details = json.loads((project / "metrics/predict_details.json").read_text())
        assert (predicted["tta"], details["weights"]) == (selected["tta"], selected["weights"])
        assert list(predicted) == ["run_id", "val_accuracy", "tta", "model_params"]  # headline


@pytest.mark.slow
def test_a_run_pushed_to_a_dvc_remote_comes_back_in_a_fresh_clone(
    committed_run: Path, tmp_path: Path
) -> None:
    """The README's remote recipe: `dvc remote add -d`, `dvc push`, then `dvc pull` elsewhere."""
    project = copy_project(committed_run, tmp_path / "project")  # a finished, committed run
    storage = tmp_path / "dvc-storage"
    sh(project, "dvc", "remote", "add", "-d", "storage", str(storage))
    commit_all(project, "remote")
    sh(project, "dvc", "push")
    # a rerun after committing the outputs (metrics, manifest) still finds the tree clean
    sh(project, "dvc", "repro", "--force", "--single-item", "predict")
    run = json.loads((project / "metrics/predict.json").read_text())["run_id"]
    rerun = json.loads((project / "submissions/latest.json").read_text())
    assert rerun["run_id"] == run and rerun["git"]["dirty"] is False
    sh(project, "git", "checkout", "--", ".")  # back to the committed outputs
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "submissions/latest.csv").exists()
    sh(clone, "dvc", "pull")
    original = (project / "submissions/latest.csv").read_bytes()
    assert (clone / "submissions/latest.csv").read_bytes() == original
    assert (clone / "models/best.pt").read_bytes() == (project / "models/best.pt").read_bytes()
    status = sh(clone, "dvc", "status")
    assert "changed" not in status.stdout  # the pulled outputs match dvc.lock


def _readme_demo() -> list[str]:
    """The README's demo command, as a user copies it (continuation lines joined)."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## Try it offline first", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    first = block.replace("\\\n", " ").splitlines()[0]
    return shlex.split(first)


@pytest.mark.slow
def test_the_readme_demo_leaves_params_and_data_as_they_were(tmp_path: Path) -> None:
    """The demo once left data.source: synthetic in params.yaml, and the user's files in
    data/raw were later replaced by synthetic ones. Now it runs in a temporary copy."""
    command = _readme_demo()
    assert command[:4] == ["dvc", "exp", "run", "--temp"]
    project = tmp_path / "project"
    project.mkdir()
    copy_repo(project)
    sh(project, "git", "init", "-q")
    commit_all(project, "clone")
    (project / "data/input/my-download.zip").write_bytes(b"the user's file")
    params_before = (project / "params.yaml").read_bytes()
    ran = sh(project, *command)
    assert "untracked files" not in ran.stdout + ran.stderr  # predict's outputs are all DVC's
    assert (project / "params.yaml").read_bytes() == params_before
    assert sorted(p.name for p in (project / "data/input").iterdir()) == [
        "README.md",
        "my-download.zip",
    ]
    assert not (project / "data/raw").exists()
    assert not (project / "submissions/latest.csv").exists()
    listed = sh(project, sys.executable, "-m", "pipeline", "experiments").stdout
    assert "(synthetic demo)" in listed and "1.0000" in listed


@pytest.mark.slow
def test_plots_draws_nothing_that_holds_a_script_tag(
    tiny_run: tuple[Path, str], tmp_path: Path
) -> None:
    """dvc-render puts each plot's data, titles and template unescaped into dvc_plots/index.html:
    a committed plot CSV (someone else's commit), a dvc.yaml title or a revision holding
    `</script><script>…` ran in the browser of whoever opened the page."""
    project = copy_project(tiny_run[0], tmp_path / "project")
    commit_all(project, "run")
    page = project / "dvc_plots/index.html"
    plots = (sys.executable, "-m", "pipeline", "plots")
    sh(project, *plots)
    assert page.is_file()
    page.unlink()
    hostile = "</script><script>alert(document.cookie)</script>"

    def refused(*revisions: str) -> str:
        result = run_tool(project, *plots, *revisions)
        assert result.returncode == 1 and not page.exists(), result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert line.startswith("error: plots: plot ") and "holds a '<' at " in line, line
        assert "alert" not in result.stderr
        return line

    candidates = project / "metrics/select_candidates.csv"
    clean = candidates.read_text()
    candidates.write_text(clean.replace("none", hostile, 1))
    assert "select_candidates.csv" in refused()
    commit_all(project, "someone else's commit")
    candidates.write_text(clean)  # the workspace is clean again; the revision is not
    assert "select_candidates.csv" in refused("HEAD")
    loss = project / "metrics/train/plots/metrics/val_loss.tsv"
    loss.write_text(loss.read_text() + f"7\t{hostile}\n")  # dvclive's TSVs
    refused()
    sh(project, "git", "checkout", "--", "metrics")
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("title: learning rate of each step",
                                                     f"title: '{hostile}'"))  # fmt: skip
    refused()  # a title, from dvc.yaml itself
