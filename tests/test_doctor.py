"""`python -m pipeline doctor` and `profile NAME --minutes M`: what a run will do on this machine,
with GPUs faked (engine/device.py's Machine) and the timing measured for real on a tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import seed_model, seed_train
from test_device import CU130_ARCHS, machine_with

from pipeline.__main__ import main
from pipeline.config.load import load_params, load_profile
from pipeline.engine import gpu, timing
from pipeline.engine.timing import TrainingEstimate, estimate_training, with_epochs

KEY = "doctor-test-key-0123456789"
FIXED = TrainingEstimate(seconds_per_step=1.0, steps_per_epoch=100, epochs=8,
                         validation_seconds=20.0)  # 120 s an epoch  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (cwd) with the shipped params.yaml, and no Kaggle credentials."""
    (tmp_path / "params.yaml").write_text(
        Path(__file__).parents[1].joinpath("params.yaml").read_text()
    )
    monkeypatch.chdir(tmp_path)
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setattr(timing, "estimate_training", lambda *_a, **_k: FIXED)
    return tmp_path


def _doctor(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str,
    estimate: TrainingEstimate = FIXED,
) -> str:  # fmt: skip
    import pipeline.commands.doctor as doctor

    monkeypatch.setattr(doctor, "estimate_training", lambda *_a, **_k: estimate)
    assert main(["doctor", *args]) == 0
    return capsys.readouterr().out


def test_doctor_on_a_t4_says_float16_compile_data_and_each_profiles_time(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    t4 = machine_with("Tesla T4", (7, 5), driver="580.65.06")
    monkeypatch.setattr(gpu, "this_machine", lambda: t4)
    monkeypatch.setenv("KAGGLE_USERNAME", "student")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    screen = _doctor(capsys, monkeypatch, "--profiles", "cpu,default")
    assert "GPU 0: Tesla T4, compute capability 7.5, 15 GiB" in screen
    assert "NVIDIA driver 580.65.06" in screen
    assert "train.device: auto → cuda" in screen
    assert "precision: float16" in screen and "loss scaler" in screen
    assert "torch.compile (train.compile: auto" in screen
    assert "downloads 'deep-learning-spring-2025-project-1' from Kaggle" in screen
    assert "KAGGLE_USERNAME/KAGGLE_KEY" in screen and KEY not in screen
    assert "default (params.yaml)" in screen  # params.yaml holds default as shipped: timed once
    assert screen.count("16.0 min") == 2  # 8 epochs of 120 s, for both profiles (FIXED)


def test_doctor_on_a_p100_with_the_default_build_shows_the_fix_and_times_the_cpu(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    p100 = machine_with("Tesla P100-PCIE-16GB", (6, 0), CU130_ARCHS)
    monkeypatch.setattr(gpu, "this_machine", lambda: p100)
    screen = _doctor(capsys, monkeypatch, "--profiles", "cpu")
    assert "train.device: auto → stops" in screen
    assert "whl/cu126" in " ".join(screen.split())
    assert "estimates below are for the CPU" in screen
    assert "Training time on this machine (cpu, measured)" in screen


def test_doctor_without_a_gpu_names_the_data_problem(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_run = dataclasses.replace(FIXED, epochs=100)  # 200 minutes: auto stops it on a CPU
    screen = _doctor(capsys, monkeypatch, "--profiles", "cpu", estimate=long_run)
    assert "train.device: auto → cpu" in screen and "precision: float32" in screen
    assert "finds no data in data/input/ or data/raw and no Kaggle credentials" in screen
    assert "(stops: over 2 h on the CPU)" in " ".join(screen.split())


def test_profile_minutes_sets_the_epochs_that_fill_the_minutes_and_keeps_the_rest(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(timing, "estimate_training", lambda *_a, **_k: FIXED)
    assert main(["profile", "cpu", "--minutes", "10"]) == 0
    assert "train.epochs 5 (profile: 8): about 10.0 min" in capsys.readouterr().out
    params = load_params(Path("params.yaml"))
    expected = dataclasses.replace(load_profile("cpu").train, epochs=5)
    assert params.train == expected and params.model == load_profile("cpu").model
    assert "profile --minutes 10" in Path("params.yaml").read_text()
    # the seed's multistep milestones move with the epochs: the lr still decays
    assert main(["profile", "seed", "--minutes", "40"]) == 0  # 20 epochs of 200
    seed = yaml.safe_load(Path("params.yaml").read_text())["train"]
    assert seed["epochs"] == 20 and seed["milestones"] == [9, 18] and seed["device"] == "auto"
    # longer than auto lets a CPU run go: the user asked for it, so train.device: cpu
    assert main(["profile", "cpu", "--minutes", "180"]) == 0
    assert "train.device: cpu, since auto stops CPU runs over 2 hours" in capsys.readouterr().out
    assert yaml.safe_load(Path("params.yaml").read_text())["train"]["device"] == "cpu"


def test_profile_minutes_replaces_a_block_style_milestone_list(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.commands.profile import fit_profile_to_minutes

    monkeypatch.setattr(timing, "estimate_training", lambda *_a, **_k: FIXED)
    profiles = tmp_path / "my-profiles"
    profiles.mkdir()
    text = Path(__file__).parents[1].joinpath("profiles/seed.yaml").read_text()
    assert "  milestones: [90, 180]" in text
    block = text.replace("  milestones: [90, 180]", "  milestones:\n    - 90\n    - 180")
    (profiles / "seed.yaml").write_text(block)
    fit_profile_to_minutes("seed", 40, Path("params.yaml"), profiles)
    seed = yaml.safe_load(Path("params.yaml").read_text())["train"]
    assert seed["epochs"] == 20 and seed["milestones"] == [9, 18]


def test_profile_minutes_out_of_range_is_one_line(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    before = Path("params.yaml").read_text()
    assert main(["profile", "cpu", "--minutes", "0"]) == 1
    assert "--minutes 0 must be in [1, 10,000]" in capsys.readouterr().err
    assert Path("params.yaml").read_text() == before


def test_with_epochs_keeps_milestones_inside_the_run() -> None:
    params = seed_train(schedule="multistep", epochs=200, milestones=[90, 180], gamma=0.1)
    assert with_epochs(params, 2).milestones == [1]  # one at the last epoch would never act
    assert with_epochs(params, 200).milestones == [90, 180]


def test_a_real_estimate_times_steps_and_validation_and_scales_the_batch() -> None:
    model = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)
    params = seed_train(device="cpu", epochs=3, batch_size=64, eval_batch_size=32, eval_tta="none")
    estimate = estimate_training(model, params, torch.device("cpu"), 640, 320)
    assert estimate.steps_per_epoch == 10 and estimate.epochs == 3
    assert estimate.seconds_per_step > 0 and estimate.validation_seconds > 0
    assert estimate.total_seconds == pytest.approx(
        3 * (10 * estimate.seconds_per_step + estimate.validation_seconds)
    )
