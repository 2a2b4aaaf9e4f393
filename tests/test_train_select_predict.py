"""train → select → predict on small synthetic data, on CPU."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHETIC, prepare_synthetic, seed_model, seed_train

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.config.params import PredictParams, SelectParams
from pipeline.data.prepared import load_split
from pipeline.engine import schedule
from pipeline.engine.models import build_model, model_config
from pipeline.engine.normalise import to_device_tensor
from pipeline.engine.tta import predict_logits
from pipeline.errors import PipelineError
from pipeline.records.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.records.submission_csv import validate_submission
from pipeline.stages import predict, select, train

MAX_PARAMS = 5_000_000  # model.max_params
TINY_MODEL = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)
TINY_TRAIN = seed_train(
    device="cpu", epochs=4, batch_size=32, lr=0.05, schedule="cosine", checkpoint_every=1
)


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after fetch (synthetic), prepare and train with a tiny model."""
    root = tmp_path_factory.mktemp("project")
    prepare_synthetic(root)
    train.run(
        TINY_MODEL,
        TINY_TRAIN,
        root / "data/prepared",
        root / "models/checkpoints",
        root / "metrics/train",
    )
    return root


def _metric_series(root: Path, name: str) -> list[float]:
    with (root / f"metrics/train/plots/metrics/{name}.tsv").open() as handle:
        return [float(row[name]) for row in csv.DictReader(handle, delimiter="\t")]


def test_training_lowers_the_loss_and_logs_every_epoch(trained_project: Path) -> None:
    losses = _metric_series(trained_project, "train_loss")
    assert len(losses) == TINY_TRAIN.epochs
    assert losses[-1] < losses[0]
    summary = json.loads((trained_project / "metrics/train/metrics.json").read_text())
    assert summary["model_params"] == 19_954  # seed_resnet at base_width 8, blocks [1, 1, 1]
    assert {"val_accuracy", "learning_rate", "images_per_second", "train_accuracy"} <= set(summary)
    assert "val_accuracy_ema" not in summary  # no EMA asked for: nothing logged for it


def test_checkpoints_carry_weights_epoch_and_val_accuracy(trained_project: Path) -> None:
    paths = sorted((trained_project / "models/checkpoints").glob("*.pt"))
    assert [p.name for p in paths] == [f"epoch_{e:04d}.pt" for e in range(1, 5)]
    checkpoint = load_checkpoint(paths[-1])
    assert checkpoint["epoch"] == 4 and 0.0 <= checkpoint["val_accuracy"] <= 1.0
    assert checkpoint["model_config"]["base_width"] == 8
    assert checkpoint["ema_state"] is None and checkpoint["val_accuracy_ema"] is None


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path: Path) -> None:
    """DVC hashes bytes: a checkpoint's md5 must not depend on the temporary file's name."""
    checkpoint = {"model_state": {"weight": torch.arange(6.0).reshape(2, 3)}, "epoch": 1}
    save_checkpoint(tmp_path / "a.pt", checkpoint)
    save_checkpoint(tmp_path / "b.pt", checkpoint)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_checkpoint_every_keeps_the_last_epoch() -> None:
    params = seed_train(epochs=25, checkpoint_every=10)
    saved = [epoch for epoch in range(1, 26) if schedule.is_checkpoint_epoch(epoch, 25, params)]
    assert saved == [10, 20, 25]


def test_lr_schedules_have_the_documented_shape() -> None:
    seed = seed_train()  # multistep: epochs count, whatever the steps per epoch
    factors = [schedule.lr_factor(epoch * 3, 3, seed) for epoch in (0, 89, 90, 179, 180, 199)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = seed_train(schedule="cosine", epochs=10)  # per step, over 10 × 4 steps
    assert schedule.lr_factor(0, 4, cosine) == 1.0
    assert schedule.lr_factor(20, 4, cosine) == pytest.approx(0.5)
    onecycle = seed_train(
        schedule="onecycle", epochs=10, warmup_fraction=0.25, lr_start_factor=0.2, lr_end_factor=0.1
    )
    factors = [schedule.lr_factor(step, 10, onecycle) for step in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[25] == pytest.approx(1.0)
    assert factors[99] == pytest.approx(0.1) and max(factors) == pytest.approx(1.0)
    rising, falling = factors[:26], factors[25:]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False)), "linear warm-up"
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False)), "linear decay"
    assert schedule.lr_factor(12, 10, onecycle) == pytest.approx(0.2 + 0.8 * 12 / 25)


def test_max_steps_ends_the_run_mid_epoch_and_the_schedule_spans_it() -> None:
    params = seed_train(epochs=10, max_steps=25, schedule="onecycle", lr_end_factor=0.05)
    assert schedule.total_steps(4, params) == 25 and schedule.run_epochs(4, params) == 7
    assert schedule.lr_factor(24, 4, params) == pytest.approx(0.05)  # the last step is the end
    assert schedule.total_steps(4, seed_train(epochs=10)) == 40


def test_same_seed_gives_identical_weights(tmp_path: Path, trained_project: Path) -> None:
    params = seed_train(device="cpu", epochs=1, batch_size=64, checkpoint_every=1)
    for run in ("a", "b"):
        train.run(
            TINY_MODEL,
            params,
            trained_project / "data/prepared",
            tmp_path / run,
            tmp_path / f"live-{run}",
        )
    first, second = (
        load_checkpoint(tmp_path / run / "epoch_0001.pt")["model_state"] for run in "ab"
    )
    assert all(torch.equal(first[key], second[key]) for key in first)


def _write_candidate(path: Path, model: torch.nn.Module, epoch: int, norm: dict) -> None:
    save_checkpoint(
        path,
        {"model_state": model.state_dict(), "model_config": model_config(TINY_MODEL), "epoch": epoch,
         "val_accuracy": 0.0, "model_params": 0, "normalization": norm, "class_names": []},
    )  # fmt: skip


def test_select_prefers_an_earlier_better_checkpoint_and_later_on_ties(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trained = load_checkpoint(trained_project / "models/checkpoints/epoch_0004.pt")
    good = build_model(TINY_MODEL)
    good.load_state_dict(trained["model_state"])
    torch.manual_seed(123)
    untrained = build_model(TINY_MODEL)
    checkpoints = tmp_path / "checkpoints"

    def select_best() -> dict:
        select.run(
            SelectParams(device="cpu"),
            MAX_PARAMS,
            trained_project / "data/prepared",
            checkpoints,
            tmp_path / "best.pt",
        )
        return json.loads(Path("metrics/select.json").read_text())

    _write_candidate(checkpoints / "epoch_0001.pt", good, 1, trained["normalization"])
    _write_candidate(checkpoints / "epoch_0002.pt", untrained, 2, trained["normalization"])
    chosen = select_best()
    assert chosen["checkpoint"] == "epoch_0001.pt"
    assert chosen["val_accuracy"] > chosen["last_epoch_val_accuracy"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1

    _write_candidate(checkpoints / "epoch_0002.pt", good, 2, trained["normalization"])
    assert select_best()["checkpoint"] == "epoch_0002.pt"


def test_select_takes_the_ema_weights_when_they_score_higher(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trained = load_checkpoint(trained_project / "models/checkpoints/epoch_0004.pt")
    torch.manual_seed(123)
    untrained = build_model(TINY_MODEL).state_dict()
    checkpoint = dict(trained, model_state=untrained, ema_state=trained["model_state"])
    save_checkpoint(tmp_path / "checkpoints/epoch_0001.pt", checkpoint)
    select.run(
        SelectParams(device="cpu"), MAX_PARAMS, trained_project / "data/prepared", tmp_path / "checkpoints",
        tmp_path / "best.pt",
    )  # fmt: skip
    chosen = json.loads(Path("metrics/select.json").read_text())
    assert chosen["weights"] == "ema" and chosen["val_accuracy"] > chosen["last_epoch_val_accuracy"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["weights"] == "ema"
    assert all(torch.equal(best["model_state"][k], trained["model_state"][k]) for k in untrained)
    with Path("metrics/select_candidates.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["weights"], row["tta"]) for row in rows] == [
        (weights, tta) for weights in ("raw", "ema") for tta in ("none", "flip", "flip_translate")
    ]


def test_predict_applies_the_tta_that_select_chose(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(trained_project / "models/checkpoints/epoch_0004.pt", checkpoints)
    prepared = trained_project / "data/prepared"
    select.run(
        SelectParams(tta_policies=["flip", "multicrop"], device="cpu"),
        MAX_PARAMS,
        prepared,
        checkpoints,
        tmp_path / "best.pt",
    )
    chosen = json.loads(Path("metrics/select.json").read_text())
    assert chosen["tta"] in ("flip", "multicrop") and chosen["candidates"] == 2
    assert chosen["last_epoch_tta"] == "flip" and chosen["gain_over_last_epoch"] >= 0
    assert load_checkpoint(tmp_path / "best.pt")["tta"] == chosen["tta"]
    predict.run(
        PredictParams(tta="auto", device="cpu"),
        prepared,
        tmp_path / "best.pt",
        tmp_path / "latest.csv",
    )
    report = json.loads(Path("metrics/predict.json").read_text())
    assert report["tta"] == chosen["tta"] and report["val_accuracy"] == pytest.approx(
        chosen["val_accuracy"]
    )
    # a checkpoint from before select stored a policy: auto means no TTA
    predict.run(
        PredictParams(device="cpu"),
        prepared,
        checkpoints / "epoch_0004.pt",
        tmp_path / "latest.csv",
    )
    assert json.loads(Path("metrics/predict.json").read_text())["tta"] == "none"


def test_predict_writes_a_valid_csv_in_the_pickles_id_order(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    best = trained_project / "models/checkpoints/epoch_0004.pt"
    predict.run(
        PredictParams(tta="flip", device="cpu"),
        trained_project / "data/prepared",
        best,
        tmp_path / "latest.csv",
    )
    lines = (tmp_path / "latest.csv").read_text().splitlines()
    assert lines[0] == "ID,Labels" and len(lines) == SMALL_SYNTHETIC.custom_test_images + 1
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(
        range(SMALL_SYNTHETIC.custom_test_images)
    )
    with Path("metrics/val_predictions.csv").open() as handle:
        pairs = [(row["actual"], row["predicted"]) for row in csv.DictReader(handle)]
    assert len(pairs) == SMALL_SYNTHETIC.val_images and {a for a, _ in pairs} <= set(
        CIFAR10_CLASS_NAMES
    )
    with Path("metrics/val_per_class.csv").open() as handle:
        per_class = {row["class"]: float(row["accuracy"]) for row in csv.DictReader(handle)}
    for name, accuracy in per_class.items():  # the bar plot agrees with the confusion data
        of_class = [p for a, p in pairs if a == name]
        assert accuracy == pytest.approx(of_class.count(name) / len(of_class), abs=1e-4)
    report = json.loads(Path("metrics/predict.json").read_text())
    overall = sum(a == p for a, p in pairs) / len(pairs)
    assert report["val_accuracy"] == pytest.approx(overall)
    details = json.loads(Path("metrics/predict_details.json").read_text())
    assert (
        report["tta"] == "flip"
        and sum(details["predicted_per_class"].values()) == SMALL_SYNTHETIC.custom_test_images
    )
    # `dvc metrics show` gets one flat row of headline figures; per class is in the details
    assert all(not isinstance(value, (dict, list)) for value in report.values()), report
    assert {"run_id", "val_accuracy", "tta", "model_params"} <= set(report)
    with Path("metrics/class_shares.csv").open() as handle:
        shares = list(csv.DictReader(handle))
    assert len(shares) == 3 * 10 and {row["labels"] for row in shares} == {
        "training", "custom test (model)", "custom test (submitted)"
    }  # fmt: skip
    for labels in ("training", "custom test (submitted)"):
        total = sum(float(row["share"]) for row in shares if row["labels"] == labels)
        assert total == pytest.approx(1.0, abs=1e-3)


def test_predict_leaves_a_run_copy_and_a_manifest_keyed_by_run_id(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_KEY", "fake-key-0123456789abcdef")  # must never reach any output
    prepared, best = (
        trained_project / "data/prepared",
        trained_project / "models/checkpoints/epoch_0004.pt",
    )

    secret_url = (
        "https://user:fake-key-0123456789abcdef@example.org/c.tar.gz?sig=fake-key-0123456789abcdef"
    )
    all_params = {"data": {"cifar_url": secret_url}}

    def predict_run(tta: str) -> dict:
        predict.run(
            PredictParams(tta=tta, device="cpu"),
            prepared,
            best,
            tmp_path / "out/latest.csv",
            all_params,
        )
        return json.loads(Path("metrics/predict.json").read_text())

    first = predict_run("flip")
    run = first["run_id"]
    assert len(run) == 12 and int(run, 16) >= 0
    copy, manifest = (
        tmp_path / f"out/{run}.csv",
        json.loads((tmp_path / "out/latest.json").read_text()),
    )
    assert copy.read_bytes() == (tmp_path / "out/latest.csv").read_bytes()
    assert manifest["csv_md5"] == hashlib.md5(copy.read_bytes()).hexdigest()
    assert (manifest["run_id"], manifest["tta"], manifest["model"]) == (run, "flip", "seed_resnet")
    assert manifest["params"] == {"data": {"cifar_url": "https://example.org/c.tar.gz"}}
    assert manifest["model_params"] == 19_954
    assert 0 <= manifest["val_accuracy_without_tta"] <= 1 and manifest["torch"] == torch.__version__
    assert set(manifest["git"]) == {"commit", "dirty"} and "device" in manifest
    assert manifest["training"] == {
        "device": "cpu",
        "deterministic": True,
        "precision": "float32",
        "compiled": False,
        "cpu_threads": torch.get_num_threads(),  # another count sums in another order
    }
    assert manifest["inference_precision"] == "float32"
    assert predict_run("flip")["run_id"] == run  # same inputs, same run
    assert predict_run("none")["run_id"] != run  # another TTA, another run
    for output in [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.csv")]:
        assert "fake-key-0123456789abcdef" not in output.read_text(), output


def test_corrupt_checkpoint_is_named(tmp_path: Path, trained_project: Path) -> None:
    good = (trained_project / "models/checkpoints/epoch_0004.pt").read_bytes()
    path = tmp_path / "epoch_0001.pt"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(PipelineError, match="epoch_0001.pt: corrupt or unsafe checkpoint"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"model_state": _Payload()}, path)
    with pytest.raises(PipelineError, match="best.pt: corrupt or unsafe checkpoint"):
        load_checkpoint(path)


def test_checkpoint_of_another_architecture_is_named(
    tmp_path: Path, trained_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = load_checkpoint(trained_project / "models/checkpoints/epoch_0004.pt")
    checkpoint["model_config"]["base_width"] = 16
    save_checkpoint(tmp_path / "best.pt", checkpoint)
    with pytest.raises(PipelineError, match="best.pt: weights do not fit model 'seed_resnet'"):
        predict.run(
            PredictParams(device="cpu"),
            trained_project / "data/prepared",
            tmp_path / "best.pt",
            tmp_path / "latest.csv",
        )
    assert not (tmp_path / "latest.csv").exists()


def test_select_without_checkpoints_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no checkpoints"):
        select.run(
            SelectParams(device="cpu"),
            MAX_PARAMS,
            tmp_path,
            tmp_path / "none",
            tmp_path / "best.pt",
        )


def test_prediction_matches_argmax_of_flip_tta(trained_project: Path) -> None:
    """The CSV's labels are the argmax of the mean of plain and mirrored logits."""
    path = trained_project / "models/checkpoints/epoch_0004.pt"
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(path, checkpoint).eval()
    custom = load_split(trained_project / "data/prepared", "custom_test")
    norm = checkpoint["normalization"]
    images = to_device_tensor(custom["images"], norm["mean"], norm["std"], torch.device("cpu"))
    with torch.no_grad():
        expected = ((model(images) + model(images.flip(3))) / 2).argmax(1).numpy()
    got = predict_logits(model, images, "flip", 16).argmax(1).numpy()
    np.testing.assert_array_equal(got, expected)


def test_a_new_training_run_removes_the_previous_runs_checkpoints(
    trained_project: Path, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(
        trained_project / "models/checkpoints", checkpoints
    )  # epochs 1–4 of an earlier run
    params = seed_train(device="cpu", epochs=1, batch_size=64, checkpoint_every=1)
    train.run(TINY_MODEL, params, trained_project / "data/prepared", checkpoints, tmp_path / "live")
    assert [p.name for p in checkpoints.iterdir()] == ["epoch_0001.pt"]


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(
    trained_project: Path, tmp_path: Path
) -> None:
    """A finite but absurd lr makes the loss NaN: training stops after that epoch, not at the
    end with an all-one-class model that predict would turn into a valid-looking CSV."""
    params = seed_train(device="cpu", epochs=3, batch_size=64, lr=1e30, checkpoint_every=1)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(PipelineError, match=r"training loss became (nan|inf) in epoch 1.*train.lr"):
        train.run(TINY_MODEL, params, trained_project / "data/prepared", checkpoints,
                  tmp_path / "live")  # fmt: skip
    assert not list(checkpoints.glob("*.pt"))


def test_a_cpu_estimate_over_an_hour_names_the_cpu_profile() -> None:
    from pipeline.engine.cpu_estimate import cpu_estimate_warning

    assert "profile cpu" not in cpu_estimate_warning(59.0, 1000)
    assert "`python -m pipeline profile cpu`" in cpu_estimate_warning(61.0, 100_000)


def test_the_cpu_estimate_counts_low_resolution_steps_at_their_pixels_share() -> None:
    """A run that starts at 16 pixels is timed on steps a quarter the cost of its later ones:
    scaling that pace by the step count would promise about a third of the real time."""
    from types import SimpleNamespace

    from pipeline.engine.cpu_estimate import ETA_PROBE_BATCHES, estimated_run_seconds

    probe_seconds = 1.0 * (ETA_PROBE_BATCHES + 1)  # each probed step took 1 s
    full = SimpleNamespace(params=SimpleNamespace(low_res_pixels=0), low_res_steps=0, run_steps=100)
    assert estimated_run_seconds(probe_seconds, full) == pytest.approx(100.0)
    half = SimpleNamespace(
        params=SimpleNamespace(low_res_pixels=16), low_res_steps=50, run_steps=100
    )
    # 50 steps at 1 s, then 50 at 4 s (a 32-pixel step has four times the pixels)
    assert estimated_run_seconds(probe_seconds, half) == pytest.approx(250.0)
    # a low-resolution phase shorter than the probe: its steps were timed at both sides
    brief = SimpleNamespace(
        params=SimpleNamespace(low_res_pixels=16), low_res_steps=2, run_steps=100
    )
    probe_mixed = 2 * 0.25 + (ETA_PROBE_BATCHES + 1 - 2) * 1.0  # seconds, at 1 s per 32-px step
    assert estimated_run_seconds(probe_mixed, brief) == pytest.approx(2 * 0.25 + 98)


def test_a_model_with_diverged_weights_writes_no_csv(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN weights (a run from before training stopped on a NaN loss) used to become a CSV of
    all class 0 that passes every format check."""
    monkeypatch.chdir(tmp_path)
    record = load_checkpoint(trained_project / "models/checkpoints/epoch_0004.pt")
    record["model_state"] = {
        name: torch.full_like(value, float("nan")) if value.is_floating_point() else value
        for name, value in record["model_state"].items()
    }
    save_checkpoint(tmp_path / "diverged.pt", record)
    with pytest.raises(PipelineError, match="not finite .*nothing was written"):
        predict.run(PredictParams(device="cpu"), trained_project / "data/prepared",
                    tmp_path / "diverged.pt", tmp_path / "latest.csv")  # fmt: skip
    assert not (tmp_path / "latest.csv").exists()


def test_the_train_stage_keeps_uint8_images_on_the_device_and_trains_the_same_weights(
    trained_project: Path, tmp_path: Path
) -> None:
    """images_on_device: uint8 through the stage (the whitening filters from normalised pixels,
    each batch normalised as drawn): the checkpoint is the float32 run's, bit for bit."""
    airnet = seed_model(name="airnet", widths=[8, 16, 16], residual=False, whiten_bias_epochs=0)
    states = []
    for images_on_device in ("float32", "uint8"):
        params = seed_train(device="cpu", epochs=1, batch_size=64, checkpoint_every=1,
                            images_on_device=images_on_device)  # fmt: skip
        checkpoints = tmp_path / images_on_device
        train.run(airnet, params, trained_project / "data/prepared", checkpoints,
                  tmp_path / f"live-{images_on_device}")  # fmt: skip
        states.append(load_checkpoint(checkpoints / "epoch_0001.pt")["model_state"])
    for name, weights in states[0].items():
        assert torch.equal(weights, states[1][name]), name


def test_the_fp16_path_a_t4_takes_runs_train_select_predict_on_the_cpu_to_a_valid_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """autocast_dtype: float16 with mixed precision: the float16 autocast and loss scaler of a
    T4, run for real on the CPU through every stage, and recorded where a run is traced."""
    prepare_synthetic(tmp_path)
    monkeypatch.chdir(tmp_path)
    fp16 = seed_train(device="cpu", epochs=2, batch_size=32, lr=0.05, autocast_dtype="float16")
    train.run(TINY_MODEL, fp16, Path("data/prepared"), Path("models/checkpoints"),
              Path("metrics/train"))  # fmt: skip
    losses = _metric_series(tmp_path, "train_loss")
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    select.run(SelectParams(device="cpu"), MAX_PARAMS, Path("data/prepared"),
               Path("models/checkpoints"), Path("models/best.pt"), tmp_path / "no-ensemble",
               autocast_dtype="float16")  # fmt: skip
    predict.run(PredictParams(device="cpu"), Path("data/prepared"), Path("models/best.pt"),
                Path("submissions/latest.csv"), autocast_dtype="float16")  # fmt: skip
    validate_submission(
        Path("submissions/latest.csv"), np.arange(SMALL_SYNTHETIC.custom_test_images)
    )
    run_id = json.loads(Path("metrics/predict.json").read_text())["run_id"]
    manifest = json.loads(Path("submissions/latest.json").read_text())
    assert manifest["run_id"] == run_id
    assert manifest["training"]["precision"] == "float16"
    assert manifest["inference_precision"] == "float16"


@pytest.mark.parametrize("damage", ["not yaml", "not a lock"])
def test_a_damaged_dvc_lock_stops_predict_before_the_csv_changes(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """predict replaced latest.csv, then crashed reading dvc.lock: CSV and manifest out of step."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out/latest.csv"
    out.parent.mkdir()
    out.write_text("ID,Labels\n0,1\n")  # the last run's
    (tmp_path / "dvc.lock").write_text(
        {"not yaml": "stages: [\n", "not a lock": "- 1\n- 2\n"}[damage]
    )
    expected = "not valid YAML" if damage == "not yaml" else "not a DVC lock file"
    with pytest.raises(PipelineError, match=f"dvc.lock: {expected}"):
        predict.run(
            PredictParams(tta="none", device="cpu"), trained_project / "data/prepared",
            trained_project / "models/checkpoints/epoch_0004.pt", out, {},
        )  # fmt: skip
    assert out.read_text() == "ID,Labels\n0,1\n"
    assert not (tmp_path / "out/latest.json").exists()


def test_the_run_files_are_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    """`LC_ALL=C PYTHONUTF8=0`: a dvc.lock or dvc.yaml with a non-ASCII character crashed predict."""
    (tmp_path / "dvc.lock").write_text("stages:\n  fetch:\n    cmd: caf\u00e9\n", encoding="utf-8")
    (tmp_path / "dvc.yaml").write_text(
        "# caf\u00e9\nstages:\n  predict:\n    deps: []\n", encoding="utf-8"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    script = (
        "import sys, pathlib\n"
        "from pipeline.records.manifest import run_id\n"
        "assert sys.flags.utf8_mode == 0\n"
        "print(len(run_id({}, [])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "12"


def test_a_dvc_yaml_without_the_predict_stage_is_one_line(tmp_path: Path) -> None:
    from pipeline.integrations.repository import stage_code_md5s

    for text in ("", "stages:\n  train: {}\n", "stages:\n  predict:\n    deps: pipeline\n"):
        (tmp_path / "dvc.yaml").write_text(text)
        with pytest.raises(PipelineError, match="dvc.yaml: no 'predict' stage with a list of deps"):
            stage_code_md5s("predict", tmp_path / "dvc.yaml")
