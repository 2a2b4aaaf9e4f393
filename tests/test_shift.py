"""Issue 13's methods on small synthetic data: test-time adaptation, distillation, all labelled
data, augmentation policies."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, prepare_synthetic, seed_model, seed_train
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.load import params_from_dict
from pipeline.config.params import (
    AdaptParams,
    DistillParams,
    PredictParams,
    PrepareParams,
    SelectParams,
)
from pipeline.data.prepared import load_split
from pipeline.data.synthetic import write_synthetic_raw
from pipeline.engine import adapt
from pipeline.engine.augment import augment_state, policy_augment
from pipeline.engine.device import FLOAT32
from pipeline.engine.distillation import DistillTargets, distillation_batch, distillation_loss
from pipeline.errors import PipelineError
from pipeline.records.checkpoint import Checkpoint, Member, load_checkpoint, save_checkpoint
from pipeline.stages import distill, distill_round, predict, prepare, select, train

TINY_MODEL = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)
TINY_TRAIN = seed_train(
    device="cpu", epochs=2, batch_size=32, lr=0.05, schedule="cosine", checkpoint_every=1
)
SELECT = SelectParams(tta_policies=["none", "flip"], device="cpu")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- test-time adaptation -------------------------------------------------------------------


def test_adabn_changes_only_the_batchnorm_buffers_of_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))  # fmt: skip
    before = copy.deepcopy(model.state_dict())
    images = torch.randn(40, 3, 8, 8) * 3 + 2  # statistics far from BatchNorm's initial 0 / 1
    adapted = adapt.recalibrate_batchnorm(model, images, batch_size=40)

    for name, value in model.state_dict().items():  # the original model: untouched
        assert torch.equal(value, before[name]), name
    changed = {name for name, value in adapted.state_dict().items()
               if not torch.equal(value, before[name])}  # fmt: skip
    assert changed and all(
        name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in changed
    ), changed
    features = model[0](images)  # one batch: the running stats are that batch's own
    assert torch.allclose(adapted[1].running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(adapted[1].running_var, features.var((0, 2, 3)), atol=1e-4)
    assert not adapted.training and adapted[1].momentum == model[1].momentum


def test_balanced_assignment_gives_the_priors_counts_on_a_skewed_example() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(53, NUM_CLASSES, generator=generator)
    logits[:, 3] += 4.0  # the model says "cat" for almost everything
    probabilities = logits.softmax(1)
    assert np.bincount(probabilities.argmax(1), minlength=10).max() > 40

    uniform = adapt.balanced_assignment(probabilities, [])
    # 53 = 10 × 5 + 3: the 3 spare labels go where the probability mass is, "cat" first (they
    # went to classes 0, 1 and 2, whatever the model said)
    mass = probabilities.sum(0).numpy()
    spares = set(np.argsort(-mass, kind="stable")[:3].tolist())
    assert 3 in spares
    expected = [6 if label in spares else 5 for label in range(10)]
    assert np.bincount(uniform, minlength=10).tolist() == expected
    prior = [4.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # a quarter... well, 4/13 of them airplanes
    skewed = adapt.balanced_assignment(probabilities, prior)
    assert (
        np.bincount(skewed, minlength=10).tolist()
        == adapt.prior_counts(prior, 53, probabilities).tolist()
        == [16, 4, 4, 5, 4, 4, 4, 4, 4, 4]  # 16.3 and 4.08 each: the spare to "cat", not 0
    )
    # the image the model finds most dog-like (after balancing) is labelled dog
    balanced = adapt.sinkhorn(probabilities, adapt.prior_counts([], 53))
    assert uniform[int(balanced[:, 5].argmax())] == 5


def test_sinkhorn_balances_columns_and_keeps_rows_distributions() -> None:
    probabilities = torch.tensor([[0.9, 0.1] + [0.0] * 8] * 10)
    counts = adapt.prior_counts([], 10)
    balanced = adapt.sinkhorn(probabilities + 1e-3, counts)
    assert torch.allclose(balanced.sum(1), torch.ones(10), atol=1e-5)
    assert torch.allclose(balanced.sum(0), torch.ones(10), atol=1e-3)


def test_the_spare_labels_go_to_the_classes_the_model_sees_most() -> None:
    """13 images, a uniform prior: 1 each and 3 spares. By index, one image was always
    "airplane" and the model's top class got 1; now the spares follow the model's mass."""
    probabilities = torch.full((13, 10), 0.01)
    probabilities[:, 7] = 0.5  # mostly horses
    probabilities[:4, 9] = 0.4  # some trucks
    probabilities[4:6, 2] = 0.45  # two birds
    probabilities = probabilities / probabilities.sum(1, keepdim=True)
    counts = adapt.prior_counts([], 13, probabilities)
    assert counts.tolist() == [1, 1, 2, 1, 1, 1, 1, 2, 1, 2]
    labels = adapt.balanced_assignment(probabilities, [])
    assert np.bincount(labels, minlength=10).tolist() == counts.tolist()
    # a total the shares divide: no spare, the same counts as before
    assert adapt.prior_counts([], 2540, torch.rand(2540, 10)).tolist() == [254] * 10


def test_prior_counts_sum_to_the_total_and_follow_the_shares() -> None:
    assert adapt.prior_counts([], 10_000).tolist() == [1000] * 10
    counts = adapt.prior_counts([3, 1, 1, 1, 1, 1, 1, 1, 1, 1], 25)
    # 25 × 3/12 = 6.25 and 25/12 = 2.08 for the others: the spare one goes to the largest rest
    assert counts.tolist() == [7] + [2] * 9


def test_adapt_params_are_checked_and_switched_off_as_one() -> None:
    with pytest.raises(PipelineError, match="adapt.prior"):
        AdaptParams(prior=[1.0, 2.0])
    off = AdaptParams(use_test_images=False, batchnorm=True, balance="prior")
    assert not off.batchnorm_on and off.balance_on == "none"


# --- prepared data, the model trained on it ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared synthetic data, a tiny run and select's best.pt in root (the working folder)."""
    root = tmp_path_factory.mktemp("shift")
    prepare_synthetic(root)
    previous = Path.cwd()
    os.chdir(root)
    try:
        train.run(TINY_MODEL, TINY_TRAIN, Path("data/prepared"), Path("models/checkpoints"),
                  Path("metrics/train"))  # fmt: skip
        select.run(SELECT, 5_000_000, Path("data/prepared"), Path("models/checkpoints"),
                   Path("models/best.pt"), Path("models/ensemble"))  # fmt: skip
    finally:
        os.chdir(previous)
    return root


@pytest.fixture
def project(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder: the trained data and checkpoints (linked, read only), its own best.pt."""
    os.symlink(trained / "data", tmp_path / "data")
    (tmp_path / "models").mkdir()
    os.symlink(trained / "models/checkpoints", tmp_path / "models/checkpoints")
    save_checkpoint(tmp_path / "models/best.pt", load_checkpoint(trained / "models/best.pt"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_predict(adapt_params: AdaptParams, model: str = "models/best.pt") -> dict:
    predict.run(PredictParams(device="cpu"), Path("data/prepared"), Path(model),
                Path("submissions/latest.csv"), adapt=adapt_params)  # fmt: skip
    return json.loads(Path("metrics/predict.json").read_text()) | json.loads(
        Path("metrics/predict_details.json").read_text()
    )  # the headline and the details


def test_predict_with_adabn_and_balance_leaves_the_model_file_untouched(project: Path) -> None:
    before = md5(project / "models/best.pt")
    report = run_predict(AdaptParams(batchnorm=True, balance="prior"))
    assert md5(project / "models/best.pt") == before
    counts = list(report["predicted_per_class"].values())
    custom_test = SMALL_SYNTHETIC.custom_test_images
    assert counts == adapt.prior_counts([], custom_test).tolist()  # balanced to the prior
    assert sum(report["argmax_per_class"].values()) == custom_test
    assert report["adapt"] == {"batchnorm": True, "balance": "prior", "prior": "uniform"}
    assert report["used_custom_test_images"] is True
    plain = run_predict(AdaptParams(use_test_images=False))
    assert plain["used_custom_test_images"] is False and plain["adapt"]["batchnorm"] is False
    assert plain["val_accuracy"] == report["val_accuracy"]  # validation: the model as selected


def test_predict_warns_when_its_own_labels_are_far_from_the_prior(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    images = load_split(Path("data/prepared"), "custom_test")["images"]
    prior = [50.0] + [1.0] * 9  # a prior the synthetic set's balanced labels are far from
    run_predict(AdaptParams(batchnorm=False, balance="none", prior=prior))
    output = capsys.readouterr().err
    assert "far from the class prior" in output and "adapt.balance: prior would" in output
    assert images.shape[0] == SMALL_SYNTHETIC.custom_test_images


def test_select_reports_the_adaptation_on_the_validation_set(project: Path) -> None:
    select.run(SELECT, 5_000_000, Path("data/prepared"), Path("models/checkpoints"),
               Path("models/best.pt"), Path("models/ensemble"), adapt=AdaptParams())  # fmt: skip
    report = json.loads(Path("metrics/select.json").read_text())["adaptation_on_val"]
    assert report["batchnorm"] is True and report["balance"] == "prior"
    assert set(report["val_accuracy"]) == {"without", "batchnorm", "batchnorm_and_balance"}
    assert (
        report["val_accuracy"]["without"]
        == json.loads(Path("metrics/select.json").read_text())["val_accuracy"]
    )


# --- distillation -----------------------------------------------------------------------------


def test_distillation_loss_is_label_smoothed_cross_entropy_for_labelled_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, NUM_CLASSES, generator=generator)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    teacher = torch.randn(4, NUM_CLASSES, generator=generator).softmax(1)
    targets = DistillTargets(first_index=100, probabilities=teacher, temperature=3.0, weight=0.5)
    labelled = torch.arange(6)  # indices below first_index: all labelled
    batch = distillation_batch(targets, labelled, labels, smoothing=0.2)
    reference = F.cross_entropy(logits, labels, label_smoothing=0.2)
    assert torch.allclose(distillation_loss(logits, *batch), reference, atol=1e-6)

    pseudo = torch.tensor([100, 101, 102, 103, 2, 3])  # four custom-test rows, two labelled
    soft_targets, temperature, weight = distillation_batch(targets, pseudo, labels, 0.2)
    assert torch.equal(soft_targets[:4], teacher) and temperature.tolist()[:5] == [3, 3, 3, 3, 1]
    expected_soft = -(teacher * F.log_softmax(logits[:4] / 3.0, 1)).sum(1) * 0.5 * 9.0
    expected_hard = F.cross_entropy(logits[4:], labels[4:], label_smoothing=0.2, reduction="none")
    expected = torch.cat([expected_soft, expected_hard]).mean()
    assert torch.allclose(
        distillation_loss(logits, soft_targets, temperature, weight), expected, atol=1e-6
    )


def distill_run(params: DistillParams, adapt_params: AdaptParams, model=TINY_MODEL) -> dict:
    distill.run(params, adapt_params, model, TINY_TRAIN, SELECT, Path("data/prepared"),
                Path("models/best.pt"), Path("models/distill"), Path("models/final.pt"),
                Path("metrics/distill"), Path("metrics/distill.json"))  # fmt: skip
    return json.loads(Path("metrics/distill.json").read_text())


def test_no_rounds_make_final_pt_a_copy_of_best_pt(project: Path) -> None:
    assert distill_run(DistillParams(rounds=0), AdaptParams())["rounds"] == 0
    assert md5(project / "models/final.pt") == md5(project / "models/best.pt")
    distill_run(DistillParams(rounds=1), AdaptParams(use_test_images=False))  # one switch
    assert md5(project / "models/final.pt") == md5(project / "models/best.pt")


def test_a_student_over_budget_is_refused_before_training(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the student trained")

    monkeypatch.setattr(distill_round, "train_model", no_training)
    monkeypatch.setattr(distill_round, "teacher_labels", no_training)
    wide = dataclasses.replace(TINY_MODEL, base_width=64, max_params=100_000)
    with pytest.raises(PipelineError, match="max_params"):
        distill_run(DistillParams(rounds=1, student=wide), AdaptParams(), model=TINY_MODEL)
    small_budget = dataclasses.replace(TINY_MODEL, max_params=10_000)  # the model's 19,954
    with pytest.raises(PipelineError, match="max_params"):
        distill_run(DistillParams(rounds=1), AdaptParams(), model=small_budget)
    assert not (project / "models/final.pt").exists()


def test_a_distilled_student_is_selected_and_recorded_and_a_rerun_reuses_it(
    project: Path,
) -> None:
    params = DistillParams(rounds=1, temperature=2.0, confidence_threshold=0.15)
    report = distill_run(params, AdaptParams())
    final = Checkpoint.load(project / "models/final.pt")
    assert final.distillation["custom_test_labels"].startswith("none")
    assert final.distillation["teacher_md5"] == md5(project / "models/best.pt")
    round_dir = project / "models/distill/round_1"
    teacher = np.load(round_dir / "teacher.npz")
    kept = teacher["rows"].size
    assert (
        kept == report["custom_test_images_used"] == final.distillation["custom_test_images_used"]
    )
    assert kept == int((teacher["confidence"] >= 0.15).sum()) and kept > 0
    assert np.allclose(teacher["probabilities"].sum(1), 1.0, atol=1e-4)
    assert final.distillation["labelled_train_images"] == SMALL_SYNTHETIC.train_images
    assert sorted(p.name for p in (round_dir / "checkpoints").iterdir()) == [
        "epoch_0001.pt", "epoch_0002.pt"
    ]  # fmt: skip
    assert md5(project / "models/final.pt") == md5(round_dir / "best.pt")
    stamp = (round_dir / "best.pt").stat().st_mtime_ns
    distill_run(params, AdaptParams())  # same inputs: the round is reused, not retrained
    assert (round_dir / "best.pt").stat().st_mtime_ns == stamp
    predicted = run_predict(AdaptParams(), "models/final.pt")
    assert predicted["distillation"]["round"] == 1 and predicted["used_custom_test_images"]


def test_two_rounds_teach_each_student_with_the_last_one(project: Path) -> None:
    report = distill_run(DistillParams(rounds=2), AdaptParams(balance="none"))
    second = report["per_round"][1]
    assert second["teacher"] == "models/distill/round_1/best.pt"
    final = Checkpoint.load(project / "models/final.pt")
    assert final.distillation["round"] == 2
    assert final.distillation["teacher_md5"] == md5(project / "models/distill/round_1/best.pt")
    stamp = (project / "models/distill/round_1/best.pt").stat().st_mtime_ns
    distill_run(DistillParams(rounds=1), AdaptParams(balance="none"))
    assert not (project / "models/distill/round_2").exists()  # a later run's fewer rounds
    assert (project / "models/distill/round_1/best.pt").stat().st_mtime_ns == stamp  # kept


def test_a_round_whose_files_are_gone_or_only_trained_is_redone_from_what_is_there(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    distill_run(DistillParams(rounds=1), AdaptParams())
    round_dir = project / "models/distill/round_1"
    first = md5(round_dir / "best.pt")
    (round_dir / "teacher.npz").unlink()  # "done" without its labels: not trusted
    distill_run(DistillParams(rounds=1), AdaptParams())
    assert (round_dir / "teacher.npz").exists() and md5(round_dir / "best.pt") == first

    # killed during selection: the trained student is selected again, not retrained
    record = json.loads((round_dir / "round.json").read_text())
    names = sorted(f"checkpoints/{p.name}" for p in (round_dir / "checkpoints").iterdir())
    (round_dir / "round.json").write_text(
        json.dumps({"key": record["key"], "status": "trained", "checkpoints": names})
    )
    (round_dir / "best.pt").unlink()
    monkeypatch.setattr(distill_round, "train_model", lambda *a, **k: pytest.fail("retrained"))
    distill_run(DistillParams(rounds=1), AdaptParams())
    assert md5(round_dir / "best.pt") == first


def test_a_threshold_that_leaves_no_image_is_one_error(project: Path) -> None:
    with pytest.raises(PipelineError, match="distill.confidence_threshold 0.99 leaves none"):
        distill_run(DistillParams(rounds=1, confidence_threshold=0.99), AdaptParams())


def test_an_ensemble_teacher_labels_with_every_member(project: Path, trained: Path) -> None:
    single = Checkpoint.load(project / "models/best.pt")
    other = Checkpoint.load(trained / "models/checkpoints/epoch_0001.pt")
    member = Member(name="epoch_1", source=None, md5=None, model_config=other.model_config,
                    model_state=other.model_state, model_params=other.model_params)  # fmt: skip
    ensemble = dataclasses.replace(single, members=(member,))
    ensemble.save(project / "models/best.pt")
    images = load_split(Path("data/prepared"), "custom_test")["images"]
    both = distill_round.teacher_labels(project / "models/best.pt", images, DistillParams(),
                                  AdaptParams(), SELECT, torch.device("cpu"), FLOAT32)  # fmt: skip
    single.save(project / "models/solo.pt")
    alone = distill_round.teacher_labels(project / "models/solo.pt", images, DistillParams(),
                                   AdaptParams(), SELECT, torch.device("cpu"), FLOAT32)  # fmt: skip
    assert not np.allclose(both.probabilities, alone.probabilities)
    ensemble.save(project / "models/best.pt")
    report = distill_run(DistillParams(rounds=1), AdaptParams())
    assert report["rounds"] == 1 and not Checkpoint.load(project / "models/final.pt").members


def test_a_teacher_with_diverged_weights_labels_nothing(project: Path) -> None:
    """NaN logits became soft labels of NaN (and balancing assigned them all the same)."""
    teacher = Checkpoint.load(project / "models/best.pt")
    nan_state = {
        name: torch.full_like(value, float("nan")) if value.is_floating_point() else value
        for name, value in teacher.model_state.items()
    }
    dataclasses.replace(teacher, model_state=nan_state).save(project / "models/nan.pt")
    images = load_split(Path("data/prepared"), "custom_test")["images"]
    with pytest.raises(PipelineError, match="distill: the teacher's outputs .* not finite"):
        distill_round.teacher_labels(project / "models/nan.pt", images, DistillParams(),
                                     AdaptParams(), SELECT, torch.device("cpu"), FLOAT32)  # fmt: skip


def test_distill_params_are_checked() -> None:
    with pytest.raises(PipelineError, match="distill.rounds"):
        DistillParams(rounds=-1)
    with pytest.raises(PipelineError, match="distill.temperature"):
        DistillParams(temperature=0.0)
    with pytest.raises(PipelineError, match="distill.teacher_max_params"):
        params_from_dict({"distill": {"rounds": 0, "teacher_max_params": 9_000_000}})
    with pytest.raises(PipelineError, match="distill.student is null"):
        params_from_dict({"distill": {"rounds": 1, "teacher_max_params": 9_000_000}})
    with pytest.raises(PipelineError, match="mixup_alpha and train.cutmix_alpha must be 0"):
        params_from_dict({"train": {"cutmix_alpha": 1.0}, "distill": {"rounds": 1}})
    # a student section's keys have their model's defaults: the budget too
    student = params_from_dict({"distill": {"student": {"name": "airnet", "widths": [8, 16, 16],
                                                        "residual": False}}})  # fmt: skip
    assert student.distill.student.max_params == 5_000_000
    with pytest.raises(PipelineError, match="distill.student.max_params"):
        params_from_dict(
            {
                "distill": {
                    "student": {
                        "name": "airnet",
                        "max_params": 6_000_000,
                        "widths": [8, 16, 16],
                        "residual": False,
                    }
                }
            }
        )
    # the student's own range and model-key errors name its keys, not the submitted model's
    airnet = {"name": "airnet", "max_params": 5_000_000, "residual": False}
    for student_values, expected in (
        ({"widths": [0, 16, 16]}, r"^params: distill\.student\.widths must be three"),
        ({"widths": [8, 16, 16], "blocks": [1]},
         r"^params: distill\.student\.blocks is not read by distill\.student\.name 'airnet'"),
    ):  # fmt: skip
        with pytest.raises(PipelineError, match=expected) as refused:
            params_from_dict({"distill": {"student": airnet | student_values}})
        assert "model." not in str(refused.value)
    student = params_from_dict(
        {
            "distill": {
                "student": {
                    "name": "airnet",
                    "max_params": 5_000_000,
                    "widths": [8, 16, 16],
                    "residual": False,
                }
            }
        }
    )
    assert student.distill.student.widths == [8, 16, 16]  # fmt: skip
    # written before airnet had model.whiten_bias_epochs and model.residual_convs: read as
    # before, no whitening bias and (if residual) one residual conv per group
    assert student.distill.student.whiten_bias_epochs == 0
    assert student.distill.student.residual_convs == 1


# --- all labelled data, augmentation ------------------------------------------------------------


def test_train_on_test_batch_adds_the_official_test_batch_to_the_training_images(
    tmp_path: Path,
) -> None:
    write_synthetic_raw(tmp_path / "raw", SMALL_SYNTHETIC)
    params = PrepareParams(val="holdout", holdout_images=50, train_on_test_batch=True)
    prepare.run(params, tmp_path / "raw", tmp_path / "prepared", tmp_path / "data.json")
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["train_images"] == SMALL_SYNTHETIC.train_images - 50 + SMALL_SYNTHETIC.val_images
    assert report["val_images"] == 50
    info = json.loads((tmp_path / "prepared/dataset.json").read_text())
    assert info["train_sources"][-1] == "test_batch"
    with pytest.raises(PipelineError, match="train_on_test_batch needs prepare.val: holdout"):
        PrepareParams(val="test_batch", train_on_test_batch=True)


@pytest.mark.parametrize("policy", ["trivial", "autoaugment", "randaugment"])
def test_augment_policies_change_images_reproducibly(policy: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=generator)
    state = augment_state(64, [0.5] * 3, [0.25] * 3, 0, torch.device("cpu"))
    first = policy_augment(images, policy, state.pixel_mean, state.pixel_std,
                           torch.Generator().manual_seed(7))  # fmt: skip
    again = policy_augment(images, policy, state.pixel_mean, state.pixel_std,
                           torch.Generator().manual_seed(7))  # fmt: skip
    assert first.shape == images.shape and first.dtype == torch.float32
    assert torch.equal(first, again)
    pixels = (images * state.pixel_std + state.pixel_mean).clamp(0, 255).round()
    assert not torch.allclose((first * state.pixel_std + state.pixel_mean), pixels)


def test_experiments_rank_by_the_submitted_models_accuracy_not_the_teachers() -> None:
    """With distillation the CSV comes from the student: predict.json's accuracy ranks a run."""
    from pipeline.commands.experiments import ranked

    def experiment(name: str, select_accuracy: float, predict_accuracy: float | None) -> dict:
        metrics = {"metrics/select.json": {"data": {"val_accuracy": select_accuracy}}}
        if predict_accuracy is not None:
            metrics["metrics/predict.json"] = {"data": {"val_accuracy": predict_accuracy}}
        return {"name": name, "executor": {"state": "success"},
                "revs": [{"rev": name * 8, "name": name, "data": {"metrics": metrics}}]}  # fmt: skip

    show = [{"rev": "base", "data": {}, "experiments": [
        experiment("teacher-best", 0.9, 0.8), experiment("student-best", 0.85, 0.95),
        experiment("stopped", 0.88, None)]}]  # fmt: skip
    assert [row["name"] for row in ranked(show)] == ["student-best", "teacher-best", "stopped"]


def test_experiments_never_apply_the_synthetic_demo_and_print_names_as_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The README's demo scores 1.0 on its easy shapes: ranked first, yet never applied."""
    import subprocess

    from pipeline.commands import experiments

    def experiment(name: str, accuracy: float, source: str) -> dict:
        params = {"params.yaml": {"data": {"data": {"source": source}}}}
        metrics = {"metrics/predict.json": {"data": {"val_accuracy": accuracy}}}
        return {"name": name, "executor": {"state": "success"},
                "revs": [{"rev": name * 8, "name": name,
                          "data": {"metrics": metrics, "params": params}}]}  # fmt: skip

    show = [{"rev": "base", "data": {}, "experiments": [
        experiment("demo", 1.0, "synthetic"), experiment("[red]real[/red]", 0.9, "auto")]}]  # fmt: skip
    calls = []

    def fake_dvc(*args: str) -> subprocess.CompletedProcess:
        calls.append(args)
        out = json.dumps(show) if args[:2] == ("exp", "show") else ""
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(experiments, "dvc", fake_dvc)
    rows = experiments.run(apply=True)
    assert [row["name"] for row in rows] == ["demo", "[red]real[/red]"]
    assert calls[-1] == ("exp", "apply", "[red]real[/red]" * 8)
    printed = capsys.readouterr().out
    assert "demo (synthetic demo)" in printed and "[red]real[/red]" in printed
    show[0]["experiments"].pop()
    with pytest.raises(PipelineError, match="a synthetic demo is never applied"):
        experiments.run(apply=True)
