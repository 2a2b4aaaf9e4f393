"""One round of distillation (stages/distill.py runs them): the teacher's soft labels of the
custom-test images, the student's training on them and its selection, in models/distill/round_N/.

Split from the stage so that `distill.rounds: 0`, the pipeline without a student, never imports
torch (seconds of every `dvc repro`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config.params import (
    AdaptParams,
    DistillParams,
    SelectParams,
    TrainParams,
)
from pipeline.data.prepared import load_split
from pipeline.engine.adapt import adapted_logits, prior_counts, require_finite, sinkhorn
from pipeline.engine.device import Precision, choose_precision, resolve_device
from pipeline.engine.distillation import DistillTargets
from pipeline.engine.distributed import current_world
from pipeline.engine.normalise import to_device_set, to_device_tensor
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, file_md5, read_json, write_json_atomic
from pipeline.integrations.repository import stage_code_md5s
from pipeline.models.registry import ModelConfig
from pipeline.records import resume
from pipeline.records.checkpoint import Checkpoint
from pipeline.reporting import console
from pipeline.stages.select import choose_best, score_checkpoints, winning_checkpoint
from pipeline.stages.train import setup_training, train_model

TEACHER_NAME = "teacher.npz"


@dataclasses.dataclass(frozen=True)
class TeacherLabels:
    """A teacher's soft labels of the custom-test images it is sure enough of."""

    rows: np.ndarray  # int64 positions in custom_test.npz of the images kept
    probabilities: np.ndarray  # float32 (kept, classes) at distill.temperature, balanced if asked
    confidence: np.ndarray  # float32 (all,): the teacher's top softmax probability, temperature 1

    def save(self, path: Path) -> None:
        with atomic_path(path) as temp_path, temp_path.open("wb") as handle:
            np.savez(handle, rows=self.rows, probabilities=self.probabilities,
                     confidence=self.confidence)  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> TeacherLabels:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(arrays["rows"], arrays["probabilities"], arrays["confidence"])


def teacher_labels(
    teacher_path: Path, images: np.ndarray, distill: DistillParams, adapt: AdaptParams,
    select: SelectParams, device: torch.device, precision: Precision,
) -> TeacherLabels:  # fmt: skip
    checkpoint = Checkpoint.load(teacher_path)
    model = checkpoint.model(teacher_path).to(device, memory_format=torch.channels_last)
    norm = checkpoint.normalization
    normalised = to_device_tensor(images, norm["mean"], norm["std"], device)
    logits = adapted_logits(
        model, normalised, checkpoint.tta or "none", adapt.batchnorm_on, select.batch_size,
        precision, select.tta_fraction,
    ).float()  # fmt: skip
    require_finite(logits, "distill", "the teacher's")
    confidence = logits.softmax(1).max(1).values
    probabilities = (logits / distill.temperature).softmax(1)
    if adapt.balance_on == "prior":
        counts = prior_counts(adapt.prior, logits.shape[0], probabilities)
        probabilities = sinkhorn(probabilities, counts)
    keep = (confidence >= distill.confidence_threshold).cpu().numpy()
    return TeacherLabels(
        rows=np.flatnonzero(keep).astype(np.int64),
        probabilities=probabilities.cpu().numpy()[keep].astype(np.float32),
        confidence=confidence.cpu().numpy().astype(np.float32),
    )


def round_key(
    number: int, teacher_path: Path, student: ModelConfig, distill: DistillParams,
    adapt: AdaptParams, train: TrainParams, select: SelectParams, prepared_dir: Path,
) -> str:  # fmt: skip
    """Digest of what round `number` depends on (its teacher's bytes, params, data, code); not
    the number of rounds, so adding a round keeps the earlier ones."""
    identity = {
        "round": number, "teacher": file_md5(teacher_path),
        "params": [dataclasses.asdict(section) for section in
                   (dataclasses.replace(distill, rounds=0), adapt, train, select)],
        "student": dataclasses.asdict(student),
        "data": {p.name: file_md5(p) for p in sorted(Path(prepared_dir).glob("*")) if p.is_file()},
        "code": stage_code_md5s("distill"),
    }  # fmt: skip
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_state(round_dir: Path, key: str) -> str | None:
    """How far round_dir got with this key's work: "labelled" (teacher.npz), "trained" (its
    checkpoints too) or "done" (best.pt too), each checked on disk; else the folder is cleared
    and None."""
    record_path = round_dir / "round.json"
    try:
        record = read_json(record_path) if record_path.exists() else {}
    except PipelineError:
        record = {}
    status = record.get("status") if record.get("key") == key else None
    needs = {"labelled": [TEACHER_NAME], "trained": [TEACHER_NAME, *record.get("checkpoints", [])],
             "done": [TEACHER_NAME, "best.pt"]}.get(status)  # fmt: skip
    if needs is not None and status == "trained" and not record.get("checkpoints"):
        needs = None
    if needs is not None and all((round_dir / name).is_file() for name in needs):
        try:
            TeacherLabels.load(round_dir / TEACHER_NAME)
            return status
        except (OSError, ValueError, KeyError):
            pass
    shutil.rmtree(round_dir, ignore_errors=True)
    return None


def shared_from_main(value: object) -> object:
    """Rank 0's `value` on every rank (its disk may be the only one holding the files)."""
    if current_world().size == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def select_student(
    round_dir: Path, select: SelectParams, prepared_dir: Path, distillation: dict,
    autocast_dtype: str,
) -> dict:  # fmt: skip
    """Select's scoring over the round's checkpoints → round_dir/best.pt; the winner's row."""
    device = resolve_device(select.device, "select.device")
    precision = choose_precision(device, select.mixed_precision, autocast_dtype)
    paths = sorted((round_dir / "checkpoints").glob("epoch_*.pt"))
    norm = Checkpoint.load(paths[-1]).normalization
    val_split = load_split(prepared_dir, "val")
    eval_set = to_device_set(
        val_split["images"], val_split["labels"], norm["mean"], norm["std"], device
    )
    best = choose_best(score_checkpoints(paths, eval_set, select, device, precision))
    winner = winning_checkpoint(round_dir / "checkpoints", best)
    dataclasses.replace(winner, distillation=distillation).save(round_dir / "best.pt")
    return best


def label_round(
    round_dir: Path, key: str, teacher_path: Path, images: np.ndarray, distill: DistillParams,
    adapt: AdaptParams, select: SelectParams, autocast_dtype: str,
) -> None:  # fmt: skip
    """Rank 0: the teacher's labels → round_dir/teacher.npz, then round.json says "labelled"."""
    device = resolve_device(select.device, "select.device")
    precision = choose_precision(device, select.mixed_precision, autocast_dtype)
    labels = teacher_labels(teacher_path, images, distill, adapt, select, device, precision)
    if labels.rows.size == 0:
        raise PipelineError(
            f"params: distill.confidence_threshold {distill.confidence_threshold} leaves none of "
            f"the {images.shape[0]} custom-test images (the teacher's highest confidence is "
            f"{labels.confidence.max():.3f}); lower it"
        )
    labels.save(round_dir / TEACHER_NAME)
    write_json_atomic(round_dir / "round.json", {"key": key, "status": "labelled"})


def run_round(
    number: int, teacher_path: Path, student: ModelConfig, distill: DistillParams,
    adapt: AdaptParams, train: TrainParams, select: SelectParams, prepared_dir: Path,
    round_dir: Path, live_dir: Path, device: torch.device,
) -> dict:  # fmt: skip
    """One round: the teacher's labels, the student's training and its selection. Rank 0
    decides and writes; the others get its key, state, labels and record by broadcast."""
    main = current_world().is_main
    key = state = None
    custom_test = load_split(prepared_dir, "custom_test")
    if main:
        key = round_key(number, teacher_path, student, distill, adapt, train, select, prepared_dir)
        state = round_state(round_dir, key)
        if state is None:
            label_round(round_dir, key, teacher_path, custom_test["images"], distill, adapt,
                        select, train.autocast_dtype)  # fmt: skip
            state = "labelled"
    key, state = shared_from_main((key, state))
    if state == "done":
        console.print(f"distill: round {number} reused ({round_dir}, its inputs unchanged)")
        return shared_from_main(read_json(round_dir / "round.json") if main else None)
    teacher_file = round_dir / TEACHER_NAME
    labels = shared_from_main(TeacherLabels.load(teacher_file) if main else None)
    teacher_md5 = shared_from_main(file_md5(teacher_file) if main else None)
    console.print(
        f"distill: round {number}: teacher {teacher_path} labelled {labels.rows.size} of "
        f"{custom_test['ids'].size} custom-test images (confidence ≥ "
        f"{distill.confidence_threshold}, temperature {distill.temperature})"
    )
    if state == "labelled":
        pseudo = (custom_test["images"][labels.rows], labels.probabilities.argmax(1))
        setup = setup_training(student, train, prepared_dir, device, pseudo)
        first_index = setup.train_set[1].shape[0] - labels.rows.size  # the labelled images
        targets = DistillTargets(
            first_index=first_index,
            probabilities=torch.from_numpy(labels.probabilities).to(device),
            temperature=distill.temperature, weight=distill.kd_weight,
        )  # fmt: skip
        training_key = resume.run_key(
            student, train, prepared_dir, device, stage="distill",
            extra={"round": key, "teacher_labels": teacher_md5},
        )  # fmt: skip
        checkpoint_dir = round_dir / "checkpoints"
        train_model(setup, student, train, training_key, checkpoint_dir, live_dir, targets)
        if main:  # a kill from here on keeps the trained student: selection starts again
            names = sorted(p.relative_to(round_dir).as_posix()
                           for p in checkpoint_dir.glob("epoch_*.pt"))  # fmt: skip
            write_json_atomic(round_dir / "round.json",
                              {"key": key, "status": "trained", "checkpoints": names})  # fmt: skip
    else:  # "trained": only the count of labelled images is needed, for the record
        first_index = load_split(prepared_dir, "train")["labels"].size
    record = None
    if main:
        distillation = {
            "round": number, "teacher": str(teacher_path),
            "teacher_md5": file_md5(teacher_path), "temperature": distill.temperature,
            "kd_weight": distill.kd_weight,
            "confidence_threshold": distill.confidence_threshold,
            "custom_test_images_used": int(labels.rows.size),
            "custom_test_labels": "none: the teacher's predictions (unlabelled images)",
            "labelled_train_images": int(first_index),
        }  # fmt: skip
        best = select_student(round_dir, select, prepared_dir, distillation, train.autocast_dtype)
        record = {
            "key": key, "status": "done", "round": number,
            "teacher": str(teacher_path), "custom_test_images_used": int(labels.rows.size),
            "mean_teacher_confidence": float(labels.confidence.mean()),
            "student_val_accuracy": best["val_accuracy"], "student_checkpoint": best["checkpoint"],
            "student_weights": best["weights"], "student_tta": best["tta"],
            "model_params": best["model_params"],
        }  # fmt: skip
        write_json_atomic(round_dir / "round.json", record)
    return shared_from_main(record)
