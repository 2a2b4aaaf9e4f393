"""Seed ensembles: select averages other runs' models with this run's within the parameter budget."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import prepare_synthetic, seed_model, seed_train
from projects import commit_all, copy_project, override, run_tool, sh

from pipeline.__main__ import main
from pipeline.config.params import PredictParams, SelectParams
from pipeline.data.prepared import load_split
from pipeline.engine.models import Ensemble
from pipeline.engine.normalise import to_device_tensor
from pipeline.errors import PipelineError
from pipeline.records.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.stages import predict, select, train

TINY_MODEL = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)
TINY_MODEL_PARAMS = 19_954  # trainable parameters of TINY_MODEL
TINY_TRAIN = seed_train(
    device="cpu", epochs=4, batch_size=32, lr=0.05, schedule="cosine", checkpoint_every=4
)
BUDGET = 5_000_000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared synthetic data and three tiny runs (seeds 0, 1, 2): runs/seed_N/epoch_0004.pt."""
    root = tmp_path_factory.mktemp("seeds")
    prepare_synthetic(root)
    previous = Path.cwd()
    os.chdir(root)  # train keeps its resume state under the working folder
    try:
        for seed in range(3):
            train.run(
                TINY_MODEL, dataclasses.replace(TINY_TRAIN, seed=seed), Path("data/prepared"),
                Path(f"runs/seed_{seed}"), Path(f"metrics/train_{seed}"),
            )  # fmt: skip
    finally:
        os.chdir(previous)
    return root


@pytest.fixture
def workspace(seeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder whose models/checkpoints holds seed 0's run; models/ensemble is empty."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/checkpoints").mkdir(parents=True)
    (tmp_path / "models/ensemble").mkdir()
    save_checkpoint(
        tmp_path / "models/checkpoints/epoch_0004.pt",
        load_checkpoint(seeds / "runs/seed_0/epoch_0004.pt"),
    )
    return tmp_path


def add_member(seeds: Path, workspace: Path, seed: int, **changes: object) -> Path:
    """Seed `seed`'s last checkpoint as a member, the way `ensemble add` stores it."""
    checkpoint = load_checkpoint(seeds / f"runs/seed_{seed}/epoch_0004.pt")
    member = dict(checkpoint, ema_state=None, weights="raw", tta="none") | changes
    path = workspace / f"models/ensemble/seed_{seed}.pt"
    save_checkpoint(path, member)
    return path


def run_select(seeds: Path, params: SelectParams, max_params: int = BUDGET) -> dict:
    select.run(params, max_params, seeds / "data/prepared", Path("models/checkpoints"),
               Path("models/best.pt"), Path("models/ensemble"))  # fmt: skip
    return json.loads(Path("metrics/select.json").read_text())


def run_predict(seeds: Path) -> dict:
    predict.run(PredictParams(device="cpu"), seeds / "data/prepared", Path("models/best.pt"),
                Path("submissions/latest.csv"), {"model": {"max_params": BUDGET}})  # fmt: skip
    return json.loads(Path("metrics/predict.json").read_text()) | json.loads(
        Path("metrics/predict_details.json").read_text()
    )  # the headline and the details


def forbid_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_inference(*args: object, **kwargs: object) -> None:
        raise AssertionError("inference ran before the ensemble was refused")

    monkeypatch.setattr(select, "evaluate", no_inference)
    monkeypatch.setattr(select, "resolve_device", no_inference)


def test_an_ensemble_over_budget_is_refused_before_any_inference(
    seeds: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_member(seeds, workspace, 1)
    add_member(seeds, workspace, 2)
    forbid_inference(monkeypatch)
    budget = 2 * TINY_MODEL_PARAMS + 1  # two of the three fit, all three do not
    with pytest.raises(PipelineError, match="ensemble over budget") as refused:
        run_select(seeds, SelectParams(device="cpu"), max_params=budget)
    message = str(refused.value)
    assert f"{3 * TINY_MODEL_PARAMS:,}" in message and f"{budget:,}" in message
    assert "models/ensemble/seed_1.pt" in message and "ensemble remove" in message
    assert not Path("models/best.pt").exists() and not Path("metrics").exists()


def test_a_member_file_whose_name_best_pt_could_not_keep_is_refused_before_any_inference(
    seeds: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file dropped in models/ensemble by hand: best.pt keeps its name, which predict checks."""
    add_member(seeds, workspace, 1).rename(workspace / "models/ensemble/my seed [1].pt")
    forbid_inference(monkeypatch)
    with pytest.raises(PipelineError, match=r"my seed \[1\].pt: not a member's name"):
        run_select(seeds, SelectParams(device="cpu"))
    assert not Path("models/best.pt").exists()


def test_a_member_trained_on_other_data_is_refused_before_any_inference(
    seeds: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = load_checkpoint(seeds / "runs/seed_1/epoch_0004.pt")["normalization"]
    add_member(seeds, workspace, 1, normalization={"mean": [0.5] * 3, "std": other["std"]})
    forbid_inference(monkeypatch)
    with pytest.raises(PipelineError, match=r"seed_1.pt: trained on other data .*normalization"):
        run_select(seeds, SelectParams(device="cpu"))
    assert not Path("models/best.pt").exists()


def test_select_reports_the_ensemble_against_its_members_and_predict_uses_it(
    seeds: Path, workspace: Path
) -> None:
    members = [add_member(seeds, workspace, seed) for seed in (1, 2)]
    chosen = run_select(
        seeds, SelectParams(tta_policies=["none", "flip"], ensemble="always", device="cpu")
    )
    ensemble = chosen["ensemble"]
    assert ensemble["used"] and ensemble["size"] == 3 and ensemble["tta"] in ("none", "flip")
    assert ensemble["model_params"] == chosen["model_params"] == 3 * TINY_MODEL_PARAMS
    assert [m["name"] for m in ensemble["members"]] == ["this run", "seed_1", "seed_2"]
    accuracies = [m["val_accuracy"] for m in ensemble["members"]]
    assert ensemble["best_member_val_accuracy"] == max(accuracies)
    assert ensemble["gain_over_best_member"] == pytest.approx(
        ensemble["val_accuracy"] - max(accuracies)
    )
    assert chosen["val_accuracy"] == ensemble["val_accuracy"] and chosen["tta"] == ensemble["tta"]
    # this run's part is the single winner, scored under the ensemble's TTA: one of its candidates
    assert accuracies[0] <= chosen["single_model_val_accuracy"]

    best = load_checkpoint(Path("models/best.pt"))
    assert [m["name"] for m in best["ensemble"]] == ["seed_1", "seed_2"]
    model = model_from_checkpoint(Path("models/best.pt"), best)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    # the ensemble's logits are the mean of its members' (float32)
    val = load_split(seeds / "data/prepared", "val")
    norm = best["normalization"]
    images = to_device_tensor(val["images"][:16], norm["mean"], norm["std"], torch.device("cpu"))
    singles = [model_from_checkpoint(p, load_checkpoint(p)).eval() for p in
               [Path("models/checkpoints/epoch_0004.pt"), *members]]  # fmt: skip
    with torch.inference_mode():
        expected = torch.stack([single(images) for single in singles]).mean(0)
        assert torch.allclose(model.eval()(images), expected, atol=1e-5)

    reported = run_predict(seeds)
    # the same model under the same TTA (select counts in float32, predict in float64)
    assert reported["val_accuracy"] == pytest.approx(ensemble["val_accuracy"])
    assert [m["name"] for m in reported["ensemble_members"]] == ["seed_1", "seed_2"]
    manifest = json.loads(Path("submissions/latest.json").read_text())
    assert manifest["model"] == "ensemble: seed_resnet + seed_resnet + seed_resnet"
    assert manifest["model_params"] == 3 * TINY_MODEL_PARAMS
    assert [m["md5"] for m in manifest["ensemble_members"]] == [m["md5"] for m in best["ensemble"]]


def test_auto_keeps_the_single_model_when_the_ensemble_scores_lower(
    seeds: Path, workspace: Path
) -> None:
    # a member whose last layer always says class 0, loudly: averaging with it only hurts
    checkpoint = load_checkpoint(seeds / "runs/seed_1/epoch_0004.pt")
    state = dict(checkpoint["model_state"])
    bias_name = [name for name in state if name.endswith(".bias")][-1]
    state[bias_name] = torch.tensor([1000.0] + [0.0] * 9)
    add_member(seeds, workspace, 1, model_state=state)
    chosen = run_select(seeds, SelectParams(tta_policies=["none"], device="cpu"))
    assert chosen["ensemble"]["used"] is False
    assert chosen["ensemble"]["val_accuracy"] < chosen["single_model_val_accuracy"]
    assert chosen["val_accuracy"] == chosen["single_model_val_accuracy"]
    assert chosen["model_params"] == TINY_MODEL_PARAMS
    assert "ensemble" not in load_checkpoint(Path("models/best.pt"))
    assert "ensemble_members" not in run_predict(seeds)


def test_never_ignores_the_members(seeds: Path, workspace: Path) -> None:
    add_member(seeds, workspace, 1)
    chosen = run_select(seeds, SelectParams(tta_policies=["none"], ensemble="never", device="cpu"),
                        max_params=TINY_MODEL_PARAMS)  # fmt: skip
    assert "ensemble" not in chosen and "ensemble" not in load_checkpoint(Path("models/best.pt"))


def test_predict_refuses_an_ensemble_checkpoint_over_its_budget(
    seeds: Path, workspace: Path
) -> None:
    add_member(seeds, workspace, 1)
    run_select(seeds, SelectParams(tta_policies=["none"], ensemble="always", device="cpu"))
    best = load_checkpoint(Path("models/best.pt"))
    best["model_config"] = dict(best["model_config"], max_params=TINY_MODEL_PARAMS + 1)
    save_checkpoint(Path("models/best.pt"), best)
    with pytest.raises(PipelineError, match=r"models/best.pt cannot be used"):
        run_predict(seeds)
    assert not Path("submissions/latest.csv").exists()


def pipeline_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_tool(project, sys.executable, "-m", "pipeline", *args)


@pytest.mark.slow
def test_a_sweeps_seed_runs_join_the_ensemble_and_come_back_from_the_remote(
    tiny_run: tuple[Path, str], tmp_path: Path
) -> None:
    """README, Scaling out: seed runs as DVC experiments → ensemble add → dvc repro → push/pull."""
    project = copy_project(tiny_run[0], tmp_path / "project")  # seed 0, trained
    override(project, {"select": {"ensemble": "always"}})
    sh(project, "dvc", "repro", "--quiet")  # select onwards
    commit_all(project, "seed 0")
    sh(project, "dvc", "exp", "run", "--temp", "--quiet", "-S", "train.seed=1", "-n", "seed1")

    assert pipeline_cli(project, "ensemble", "add", "nonexistent").returncode == 1
    added = pipeline_cli(project, "ensemble", "add", "seed1")
    assert added.returncode == 0, added.stderr
    member = load_checkpoint(project / "models/ensemble/seed1.pt")
    head = sh(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert member["source"]["revision"] == "seed1" and member["source"]["commit"] != head
    assert member["ema_state"] is None and (project / "models/ensemble/seed1.pt.dvc").exists()
    listed = pipeline_cli(project, "ensemble", "list")
    assert "seed1" in listed.stdout and "within the budget" in listed.stdout
    duplicate = pipeline_cli(project, "ensemble", "add", "seed1")
    assert duplicate.returncode == 1 and "already a member" in duplicate.stderr

    status = sh(project, "dvc", "status").stdout
    assert "select" in status and "models/ensemble" in status  # a new member reruns select
    sh(project, "dvc", "repro", "--quiet")
    chosen = json.loads((project / "metrics/select.json").read_text())
    assert chosen["ensemble"]["used"] and chosen["ensemble"]["size"] == 2
    commit_all(project, "ensemble of seeds 0 and 1")

    remote = tmp_path / "remote"
    sh(project, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(project, "dvc", "push", "--quiet")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(clone, "dvc", "pull", "--quiet")
    assert (clone / "models/ensemble/seed1.pt").read_bytes() == (
        project / "models/ensemble/seed1.pt"
    ).read_bytes()
    assert "up to date" in sh(clone, "dvc", "status").stdout.lower()

    removed = pipeline_cli(project, "ensemble", "remove", "seed1")
    assert removed.returncode == 0, removed.stderr
    assert not (project / "models/ensemble/seed1.pt").exists()
    assert not (project / "models/ensemble/seed1.pt.dvc").exists()
    override(project, {"select": {"ensemble": "auto"}})
    sh(project, "dvc", "repro", "--quiet")
    assert "ensemble" not in json.loads((project / "metrics/select.json").read_text())


def test_ensemble_add_takes_a_checkpoint_file_and_refuses_what_cannot_be_a_member(
    seeds: Path, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    sh(workspace, "git", "init", "-q")
    sh(workspace, "dvc", "init", "-q")
    (workspace / "params.yaml").write_text(
        yaml.safe_dump({"model": dataclasses.asdict(TINY_MODEL)})
    )
    source = seeds / "runs/seed_1/epoch_0004.pt"
    assert main(["ensemble", "add", str(source), "--name", "bad/name"]) == 1
    assert main(["ensemble", "add", str(workspace / "missing.pt")]) == 1
    assert "neither a checkpoint file nor a git revision" in capsys.readouterr().err
    assert member_files(workspace) == []

    assert main(["ensemble", "add", str(source)]) == 0
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    member = load_checkpoint(workspace / f"models/ensemble/run-{md5[:8]}.pt")
    assert member["source"] == {"file": str(source.resolve()), "md5": md5}
    assert member["ema_state"] is None
    assert (workspace / f"models/ensemble/run-{md5[:8]}.pt.dvc").exists()
    assert f"/run-{md5[:8]}.pt" in (workspace / "models/ensemble/.gitignore").read_text()
    assert "within the budget" in capsys.readouterr().out

    run_select(
        seeds, SelectParams(tta_policies=["none"], ensemble="always", device="cpu")
    )  # an ensemble
    assert main(["ensemble", "add", "models/best.pt", "--name", "nested"]) == 1
    assert "is itself an ensemble" in capsys.readouterr().err
    assert main(["ensemble", "remove", "../best"]) == 1  # a name, never a path
    assert "not a member name" in capsys.readouterr().err and Path("models/best.pt").exists()
    assert main(["ensemble", "remove", f"run-{md5[:8]}"]) == 0
    assert member_files(workspace) == []


def member_files(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "models/ensemble").iterdir())


def test_a_source_path_in_rich_markup_is_added_and_listed_as_text(
    seeds: Path, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    """`ensemble add '/x/a[/]b/best.pt'` added the member, then crashed on printing it, and
    `ensemble list` crashed until it was removed."""
    sh(workspace, "git", "init", "-q")
    sh(workspace, "dvc", "init", "-q")
    (workspace / "params.yaml").write_text(
        yaml.safe_dump({"model": dataclasses.asdict(TINY_MODEL)})
    )
    folder = workspace / "a[/]b [bold]"  # folders "a[" and "]b [bold]"
    folder.mkdir(parents=True)
    source = folder / "best.pt"
    source.write_bytes((seeds / "runs/seed_1/epoch_0004.pt").read_bytes())
    assert main(["ensemble", "add", str(source), "--name", "bracketed"]) == 0
    said = capsys.readouterr()
    assert f"from {source})" in said.err and "within the budget" in said.out
    assert main(["ensemble", "list"]) == 0
    listed = capsys.readouterr().out
    assert "bracketed" in listed and "a[/]b [bold]" in listed, listed
