"""Stage 5, predict → submissions/latest.csv: the selected model with test-time augmentation.

Loads models/best.pt (weights only; a seed ensemble when select chose one: its members' logits
are averaged), averages logits over the TTA views of each custom test image
(`predict.tta`; `auto`: the policy select chose, stored in best.pt), and writes one `ID,Labels`
row per id in the pickle's order. The CSV is validated
before it replaces latest.csv. Validation accuracy under the same TTA goes to metrics/predict.json;
each validation image's actual and predicted class to metrics/val_predictions.csv (DVC's
confusion-matrix plot) and the accuracy per class to metrics/val_per_class.csv (a bar plot).
Each run also leaves submissions/<run_id>.csv (a copy) and submissions/<run_id>.json, its
manifest (pipeline/manifest.py says what run_id covers and what the manifest holds).
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
from pathlib import Path

import torch

from pipeline.config.params import PredictParams
from pipeline.data.prepared import load_split
from pipeline.engine.device import resolve_device
from pipeline.engine.models import count_trainable_params
from pipeline.engine.normalise import to_device_set, to_device_tensor
from pipeline.engine.tta import evaluate, predict_logits
from pipeline.files import atomic_path, file_md5, write_json_atomic, write_text_atomic
from pipeline.paths import (
    BEST_PATH,
    PREDICT_METRICS_PATH,
    PREPARED_DIR,
    SUBMISSION_PATH,
    VAL_PER_CLASS_PATH,
    VAL_PREDICTIONS_PATH,
)
from pipeline.records import manifest
from pipeline.records.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.records.submission_csv import write_submission
from pipeline.reporting import console


def run(
    params: PredictParams,
    prepared_dir: Path = PREPARED_DIR,
    best_path: Path = BEST_PATH,
    submission_path: Path = SUBMISSION_PATH,
    all_params: dict | None = None,  # every section of params.yaml (dvc.yaml declares them all)
) -> None:
    device = resolve_device(params.device, "predict.device")
    mixed_precision = params.mixed_precision
    checkpoint = load_checkpoint(best_path)
    model = model_from_checkpoint(best_path, checkpoint).to(
        device, memory_format=torch.channels_last
    )
    mean, std = checkpoint["normalization"]["mean"], checkpoint["normalization"]["std"]
    tta = checkpoint.get("tta", "none") if params.tta == "auto" else params.tta
    class_names = checkpoint.get("class_names", [])

    val_split = load_split(prepared_dir, "val")
    val_set = to_device_set(val_split["images"], val_split["labels"], mean, std, device)
    val_predicted = predict_logits(model, val_set[0], tta, params.batch_size, mixed_precision)
    val_predicted = val_predicted.argmax(1).cpu().numpy()
    val_actual = val_split["labels"]
    val_accuracy = float((val_predicted == val_actual).mean())
    names = class_names or [str(c) for c in range(10)]
    custom_test = load_split(prepared_dir, "custom_test")
    images = to_device_tensor(custom_test["images"], mean, std, device)
    labels = (
        predict_logits(model, images, tta, params.batch_size, mixed_precision)
        .argmax(1)
        .cpu()
        .numpy()
    )
    write_submission(submission_path, custom_test["ids"], labels)
    plain_accuracy = val_accuracy
    if tta != "none":
        plain_accuracy = evaluate(model, *val_set, "none", params.batch_size, mixed_precision)[0]
    predict_inputs = {"predict": dataclasses.asdict(params), "device": device.type,
                      "torch": torch.__version__}  # fmt: skip
    run = manifest.run_id(predict_inputs, [best_path, prepared_dir / "custom_test.npz"])
    csv_copy = submission_path.parent / f"{run}.csv"
    with atomic_path(csv_copy) as temp_path:
        shutil.copyfile(submission_path, temp_path)
    # the plots only once the submission is in place: a failed run leaves the last run's
    write_text_atomic(
        VAL_PREDICTIONS_PATH,
        "actual,predicted\n"
        + "".join(
            f"{names[a]},{names[p]}\n" for a, p in zip(val_actual, val_predicted, strict=True)
        ),
    )
    per_class = [
        f"{name},{(val_predicted[val_actual == c] == c).mean():.4f}\n"
        for c, name in enumerate(names)
        if (val_actual == c).any()
    ]
    write_text_atomic(VAL_PER_CLASS_PATH, "class,accuracy\n" + "".join(per_class))

    counts = torch.bincount(torch.from_numpy(labels), minlength=len(names)).tolist()
    members = [
        {key: member.get(key) for key in ("name", "md5", "source", "model_params")}
        | {"model": member["model_config"].get("name")}
        for member in checkpoint.get("ensemble") or []
    ]
    report = {
        "run_id": run, "tta": tta, "weights": checkpoint.get("weights", "raw"),
        "val_accuracy": val_accuracy, "val_accuracy_without_tta": plain_accuracy,
        "epoch": int(checkpoint["epoch"]), "custom_test_images": int(labels.size),
        "predicted_per_class": dict(zip(names, counts, strict=True)),
    } | ({"ensemble_members": members} if members else {})  # fmt: skip
    model_name = checkpoint["model_config"]["name"]
    if members:  # "ensemble: airnet + airnet + airnet"
        model_name = "ensemble: " + " + ".join([model_name] + [m["model"] for m in members])
    write_json_atomic(
        submission_path.parent / f"{run}.json",
        {
            "run_id": run, "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": manifest.git_state(), "dvc_lock_sha256": manifest.lock_sha256(),
            "params": manifest.without_secrets(all_params), "model": model_name,
            "model_config": checkpoint["model_config"], "model_params": count_trainable_params(model),
            "checkpoint_epoch": int(checkpoint["epoch"]), "csv": csv_copy.name,
            "training": checkpoint.get("training", {"device": None, "deterministic": None}),
            "csv_md5": file_md5(submission_path),
        } | report | manifest.environment(device),
    )  # fmt: skip
    write_json_atomic(PREDICT_METRICS_PATH, report)
    console.print(
        f"predict: {labels.size} rows → {submission_path} and {csv_copy.name} "
        f"(run {run}, TTA {tta}, val accuracy {val_accuracy:.4f})"
    )
