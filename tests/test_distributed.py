"""Data-parallel training (torchrun, gloo on CPU): the same step as one process on the whole batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SMALL_SYNTHETIC
from ddp_worker import tiny_model, train_tiny
from projects import TINY_PARAMS, new_project, sh, tool_env

from pipeline.__main__ import main
from pipeline.data.synthetic import write_synthetic_raw
from pipeline.engine.distributed import World
from pipeline.records.checkpoint import Checkpoint
from pipeline.records.submission_csv import validate_submission

pytestmark = pytest.mark.slow


def test_two_processes_give_the_weights_of_one_process_on_the_combined_batch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(out, weights_only=True)
    single, single_seen = train_tiny(nproc=1)
    # each rank trained on its own half of every batch, and together on exactly that batch
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single_seen) == 8
    for step, whole in enumerate(single_seen):
        first, second = ranks[0][step], ranks[1][step]
        assert len(first) == len(second) == 10 and not set(first) & set(second)
        assert first + second == whole
    for name, weights in single.items():
        torch.testing.assert_close(distributed[name], weights, rtol=1e-4, atol=1e-5, msg=name)
    # and the run did move the weights: the comparison is not of two untouched models
    assert any(not torch.equal(single[n], w) for n, w in tiny_model().state_dict().items())


def test_each_rank_takes_an_equal_contiguous_share_of_every_batch() -> None:
    batch = torch.arange(12)
    shares = [World(rank, rank, 3).local_slice(batch).tolist() for rank in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_a_pipeline_run_with_two_processes_writes_one_set_of_outputs(tmp_path: Path) -> None:
    train = {**TINY_PARAMS["train"], "epochs": 2, "nproc": 2, "drop_last": True}
    distill = {"rounds": 1}  # the student trains under torchrun too
    project = new_project(tmp_path, "seed", TINY_PARAMS | {"train": train, "distill": distill})
    run = sh(project, "dvc", "repro")
    log = run.stdout + run.stderr
    assert "train: starting 2 processes with torchrun" in log
    assert "distill: starting 2 processes with torchrun" in log
    assert log.count("train: done in") == 2  # teacher, student; rank 1 writes and prints nothing
    assert log.count("distill: 1 round(s)") == 1
    assert sorted(p.name for p in (project / "models/distill/round_1/checkpoints").iterdir()) == [
        "epoch_0002.pt"
    ]
    assert Checkpoint.load(project / "models/final.pt").distillation["round"] == 1
    assert sorted(p.name for p in (project / "models/checkpoints").iterdir()) == [
        "epoch_0002.pt"
    ]  # checkpoint_every 2: the last epoch's only
    metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    assert metrics["step"] == 2  # two epochs logged once each (dvclive's step is the epoch)
    validate_submission(project / "submissions/latest.csv", np.arange(200))
    assert (
        not list((project / ".resume").glob("train-*")) if (project / ".resume").exists() else True
    )


def test_a_queued_sweep_runs_two_at_a_time_and_the_best_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    small = {"source": "synthetic",
             "synthetic": {"train_images": 300, "val_images": 100, "custom_test_images": 50}}  # fmt: skip
    project = new_project(tmp_path, "seed", TINY_PARAMS | {"data": small})
    # a grid of 2 × 1: two lrs, both at 2 epochs (the workspace has 6): two params to apply
    sh(project, "dvc", "exp", "run", "--queue", "-S", "train.lr=0.01,0.1", "-S", "train.epochs=2")
    sh(project, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", sh(project, "dvc", "queue", "status").stdout):
        assert time.monotonic() < deadline, "the queue did not finish"
        time.sleep(2)

    show = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    finished = {
        rev["name"]: (
            rev["data"]["metrics"]["metrics/predict.json"]["data"]["val_accuracy"],
            rev["data"]["params"]["params.yaml"]["data"]["train"],
        )
        for entry in show if entry["rev"] != "workspace"
        for experiment in entry["experiments"] or [] for rev in experiment["revs"]
    }  # fmt: skip
    assert len(finished) == 2
    best = max(finished, key=lambda name: finished[name][0])

    monkeypatch.chdir(project)
    # these experiments train on synthetic data, which --apply otherwise never takes
    from pipeline.commands import experiments

    monkeypatch.setattr(experiments, "is_synthetic", lambda params: False)
    assert main(["experiments", "--apply"]) == 0
    table = capsys.readouterr().out
    assert table.index(best) < min(table.index(n) for n in finished if n != best)
    params = yaml.safe_load((project / "params.yaml").read_text())["train"]
    assert (params["lr"], params["epochs"]) == (
        finished[best][1]["lr"],
        finished[best][1]["epochs"],
    )
    applied = json.loads((project / "metrics/predict.json").read_text())["val_accuracy"]
    assert applied == finished[best][0]


def test_a_killed_two_process_run_resumes_from_rank_0s_state(tmp_path: Path) -> None:
    """The state rank 0 kept reaches rank 1 (broadcast), and the run ends; nothing hangs."""
    project = tmp_path / "project"
    write_synthetic_raw(project / "data/raw", SMALL_SYNTHETIC)
    (project / "params.yaml").write_text(
        "model:\n  name: seed_resnet\n  base_width: 8\n  blocks: [1, 1, 1]\n  dropout: 0.17\n"
        "train:\n  device: cpu\n  epochs: 6\n  batch_size: 20\n  drop_last: true\n"
        "  checkpoint_every: 1\n  nproc: 2\n  ema_decay: 0.9\n  augment_policy: none\n"
    )
    env = tool_env()
    command = [sys.executable, "-m", "pipeline", "train"]
    subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=project, env=env, check=True)
    states = project / ".resume"
    run = subprocess.Popen(command, cwd=project, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(states.glob("train-*/state.pt")):
        assert run.poll() is None and time.monotonic() < deadline, "training ended early"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # torchrun and both workers
    run.wait()

    resumed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train: resuming after epoch" in resumed.stderr
    assert (project / "models/checkpoints/epoch_0006.pt").exists()
    assert not list(states.glob("train-*"))
