"""Stage 5, predict → submissions/latest.csv: the selected model with test-time augmentation.

Loads models/best.pt (weights only; a seed ensemble when select chose one: its members' logits
are averaged), averages logits over the TTA views of each custom test image
(`predict.tta`; `auto`: the policy select chose, stored in best.pt), and writes one `ID,Labels`
row per id in the pickle's order. The CSV is validated
before it replaces latest.csv. The headline figures (run_id, validation accuracy under the same
TTA, ...) go to metrics/predict.json, `dvc metrics show`'s table; what is per class or nested
(label counts, adaptation, distillation, ensemble members) to metrics/predict_details.json.
Plots: each validation image's actual and predicted class in metrics/val_predictions.csv (DVC's
confusion matrix), the accuracy per class in metrics/val_per_class.csv, and the share of each
class among the training labels beside the model's own labels of the custom test set in
metrics/class_shares.csv (a picture of the shift).
Each run also leaves submissions/<run_id>.csv (a copy) and submissions/latest.json, its
manifest (records/manifest.py says what run_id covers and what the manifest holds).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.config.params import AdaptParams, PredictParams
from pipeline.data.prepared import load_split
from pipeline.engine.adapt import adapted_logits, assign_labels, prior_counts, require_finite
from pipeline.engine.device import Precision, choose_precision, resolve_device
from pipeline.engine.models import count_trainable_params
from pipeline.engine.normalise import to_device_set, to_device_tensor
from pipeline.engine.tta import evaluate, predict_logits
from pipeline.files import atomic_path, write_json_atomic
from pipeline.paths import (
    CLASS_SHARES_PATH,
    FINAL_PATH,
    PREDICT_DETAILS_PATH,
    PREDICT_METRICS_PATH,
    PREPARED_DIR,
    SUBMISSION_PATH,
    VAL_PER_CLASS_PATH,
    VAL_PREDICTIONS_PATH,
)
from pipeline.records import manifest
from pipeline.records.checkpoint import Checkpoint
from pipeline.records.plot_csv import write_plot_csv
from pipeline.records.submission_csv import write_submission
from pipeline.reporting import console, warn


def predicted_classes(
    model: nn.Module, images: torch.Tensor, tta: str, params: PredictParams, precision: Precision
) -> np.ndarray:
    logits = predict_logits(model, images, tta, params.batch_size, precision, params.tta_fraction)
    return logits.argmax(1).cpu().numpy()


IMBALANCE_WARNING = 0.3  # a class this far (as a share of its expected count) from the prior


def class_imbalance(counts: list[int], prior: list[float]) -> float:
    """The largest |count − expected| / expected over the classes, expected from the prior."""
    expected = prior_counts(prior, sum(counts))
    return float(max(abs(c - e) / max(e, 1) for c, e in zip(counts, expected, strict=True)))


def label_custom_test(
    model: nn.Module, images: torch.Tensor, tta: str, adapt: AdaptParams, params: PredictParams,
    precision: Precision,
) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """The custom test set's labels (after AdaBN and balancing where `adapt` asks for them) and
    the counts per class the model's own argmax gave (before balancing)."""
    logits = adapted_logits(
        model, images, tta, adapt.batchnorm_on, params.batch_size, precision, params.tta_fraction
    )
    require_finite(logits, "predict", "the model's")
    argmax_counts = torch.bincount(logits.argmax(1).cpu(), minlength=logits.shape[1]).tolist()
    return assign_labels(logits, adapt.balance_on, adapt.prior), argmax_counts


def write_class_shares(
    names: list[str], training_labels: np.ndarray, argmax_counts: list[int], counts: list[int]
) -> None:
    """Each class's share of the training labels, of the model's own labels of the custom test
    set (argmax, before balancing) and of the submitted labels; long format, one row per class
    and labelling (plots/class_shares.json draws them as grouped bars)."""
    shares = {
        "training": np.bincount(training_labels, minlength=len(names)),
        "custom test (model)": np.asarray(argmax_counts),
        "custom test (submitted)": np.asarray(counts),
    }
    write_plot_csv(
        CLASS_SHARES_PATH, ["class", "labels", "share"],
        [[name, labels, f"{count[c] / max(1, count.sum()):.4f}"]
         for c, name in enumerate(names) for labels, count in shares.items()],
    )  # fmt: skip


def write_validation_plots(names: list[str], actual: np.ndarray, predicted: np.ndarray) -> None:
    """DVC's confusion matrix (actual,predicted per image) and the accuracy per class."""
    write_plot_csv(
        VAL_PREDICTIONS_PATH, ["actual", "predicted"],
        [[names[a], names[p]] for a, p in zip(actual, predicted, strict=True)],
    )  # fmt: skip
    write_plot_csv(
        VAL_PER_CLASS_PATH, ["class", "accuracy"],
        [[name, f"{(predicted[actual == c] == c).mean():.4f}"]
         for c, name in enumerate(names) if (actual == c).any()],
    )  # fmt: skip


LABELLED_ONLY = AdaptParams(use_test_images=False)  # each custom-test image labelled alone


def run(
    params: PredictParams,
    prepared_dir: Path = PREPARED_DIR,
    model_path: Path = FINAL_PATH,
    submission_path: Path = SUBMISSION_PATH,
    all_params: dict | None = None,  # every section of params.yaml (dvc.yaml declares them all)
    adapt: AdaptParams = LABELLED_ONLY,
    autocast_dtype: str = "auto",  # train.autocast_dtype: inference in training's precision
) -> None:
    device = resolve_device(params.device, "predict.device")
    precision = choose_precision(device, params.mixed_precision, autocast_dtype)
    checkpoint = Checkpoint.load(model_path)
    model = checkpoint.model(model_path).to(device, memory_format=torch.channels_last)
    mean, std = checkpoint.normalization["mean"], checkpoint.normalization["std"]
    tta = (checkpoint.tta or "none") if params.tta == "auto" else params.tta
    console.print(f"predict: {device.type}, {precision.name} ({precision.reason})")
    names = CIFAR10_CLASS_NAMES  # the checkpoint's own, if it has them, are these (checked on load)

    val_split = load_split(prepared_dir, "val")
    val_set = to_device_set(val_split["images"], val_split["labels"], mean, std, device)
    val_actual, val_predicted = (
        val_split["labels"],
        predicted_classes(model, val_set[0], tta, params, precision),
    )
    val_accuracy = float((val_predicted == val_actual).mean())
    custom_test = load_split(prepared_dir, "custom_test")
    images = to_device_tensor(custom_test["images"], mean, std, device)
    labels, argmax_counts = label_custom_test(model, images, tta, adapt, params, precision)
    # the run's id from dvc.lock and dvc.yaml before latest.csv changes: a damaged dvc.lock stops
    # predict with the last run's CSV and manifest still in step
    predict_inputs = {"predict": dataclasses.asdict(params), "adapt": dataclasses.asdict(adapt),
                      "device": device.type, "torch": torch.__version__}  # fmt: skip
    run_id = manifest.run_id(predict_inputs, [model_path, prepared_dir / "custom_test.npz"])
    files = manifest.run_files(run_id, submission_path.parent)
    git = manifest.git_state()  # (the run's own outputs are not counted as changes)
    write_submission(submission_path, custom_test["ids"], labels)
    plain_accuracy = val_accuracy
    if tta != "none":
        plain_accuracy = evaluate(model, *val_set, "none", params.batch_size, precision)[0]

    with atomic_path(files.csv) as temp_path:
        shutil.copyfile(submission_path, temp_path)
    # the plots only once the submission is in place: a failed run leaves the last run's
    write_validation_plots(names, val_actual, val_predicted)
    counts = torch.bincount(torch.from_numpy(labels), minlength=len(names)).tolist()
    members = [
        {"name": member.name, "md5": member.md5, "source": member.source,
         "model_params": member.model_params, "model": member.model_config.get("name")}
        for member in checkpoint.members
    ]  # fmt: skip
    trainable = count_trainable_params(model)
    headline = {  # `dvc metrics show`: the project's one metrics file, one short row
        "run_id": run_id,
        "val_accuracy": val_accuracy,
        "tta": tta,
        "model_params": trainable,
    }
    report = headline | {
        "val_accuracy_without_tta": plain_accuracy, "weights": checkpoint.weights or "raw",
        "epoch": int(checkpoint.epoch),
        "custom_test_images": int(labels.size),
        "argmax_imbalance": class_imbalance(argmax_counts, adapt.prior),
        "used_custom_test_images": adapt.batchnorm_on or adapt.balance_on != "none"
        or checkpoint.distillation is not None,
    }  # fmt: skip
    details = {key: value for key, value in report.items() if key not in headline} | {
        "predicted_per_class": dict(zip(names, counts, strict=True)),
        "argmax_per_class": dict(zip(names, argmax_counts, strict=True)),
        "adapt": {"batchnorm": adapt.batchnorm_on, "balance": adapt.balance_on,
                  "prior": adapt.prior or "uniform"},
        "distillation": checkpoint.distillation,
        "inference_precision": precision.name,
    } | ({"ensemble_members": members} if members else {})  # fmt: skip
    manifest.write_manifest(
        run_id,
        checkpoint,
        trainable,
        submission_path,
        report | details,
        all_params,
        device,
        git,
    )
    write_class_shares(names, np.load(prepared_dir / "train.npz")["labels"], argmax_counts, counts)
    write_json_atomic(PREDICT_DETAILS_PATH, details)
    write_json_atomic(PREDICT_METRICS_PATH, headline)
    if report["argmax_imbalance"] > IMBALANCE_WARNING:
        warn(
            f"the model's own labels of the custom test set are far from the "
            f"class prior (a class off by {report['argmax_imbalance']:.0%} of its expected count: "
            f"{', '.join(f'{n} {c}' for n, c in zip(names, argmax_counts, strict=True))}), a sign "
            "that its images differ from the training images"
            + (
                "; adapt.balance: prior assigns them to the prior's counts"
                if adapt.balance_on == "prior"
                else "; adapt.balance: prior would balance them"
            )
        )
    console.print(
        f"predict: {labels.size} rows → {submission_path} and {files.csv.name} "
        f"(run {run_id}, TTA {tta}, val accuracy {val_accuracy:.4f})"
    )
