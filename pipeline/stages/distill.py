"""Stage 5, distill → models/final.pt: students taught by the selected model on the custom-test images.

The custom-test images come from another source than CIFAR-10, and they are unlabelled. A
teacher (round 1: select's winner, models/best.pt, a seed ensemble too, with its TTA and the
test-time adaptation of `adapt`) gives each of them soft labels: its softmax at
`distill.temperature`, balanced to the class prior when `adapt.balance: prior`. Images it is
less sure of than `distill.confidence_threshold` are left out. A student (the `model` section,
or `distill.student`; within `model.max_params`, checked before anything trains) then trains
with the `train` recipe on the labelled training images plus those images (loss:
engine/loop.py's `DistillTargets`), and its checkpoints go through select's scoring on the
validation set. Its winner is the next round's teacher; the last one is models/final.pt, which
predict labels the custom test set with. `distill.rounds: 0` (or `adapt.use_test_images:
false`) makes final.pt a copy of best.pt: the pipeline without distillation.

Each round lives in models/distill/round_N/: `teacher.npz` (the soft labels, which image ids
they cover, the teacher's confidence), `checkpoints/`, `best.pt`, and `round.json`, whose `key`
digests everything the round depends on. The folder persists across runs (dvc.yaml): a round
whose key matches is reused, a killed student resumes from `.resume/` like train, and a round
with another key is redone. Under torchrun (`train.nproc` > 1) every rank trains; rank 0
labels, selects and writes.
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

from pipeline.config.load import DEFAULT_PARAMS_PATH
from pipeline.config.params import (
    AdaptParams,
    DistillParams,
    ModelParams,
    SelectParams,
    TrainParams,
)
from pipeline.data.prepared import load_split
from pipeline.engine.adapt import adapted_logits, prior_counts, sinkhorn
from pipeline.engine.distributed import current_world
from pipeline.engine.loop import DistillTargets
from pipeline.engine.models import build_model, count_trainable_params
from pipeline.engine.normalise import to_device_set, to_device_tensor
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, file_md5, read_json, write_json_atomic
from pipeline.integrations.repository import stage_code_md5s
from pipeline.paths import (
    BEST_PATH,
    DISTILL_DIR,
    DISTILL_LIVE_DIR,
    DISTILL_METRICS_PATH,
    FINAL_PATH,
    PREPARED_DIR,
)
from pipeline.records import resume
from pipeline.records.checkpoint import Checkpoint
from pipeline.reporting import console
from pipeline.stages.select import choose_best, score_checkpoints, winning_checkpoint
from pipeline.stages.train import finish_workers, setup_training, start_workers, train_model

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


def student_model(distill: DistillParams, model_params: ModelParams) -> ModelParams:
    """The student's model, within the submitted model's budget (`model.max_params`)."""
    student = distill.student or model_params
    return dataclasses.replace(student, max_params=min(student.max_params, model_params.max_params))


def teacher_labels(
    teacher_path: Path, images: np.ndarray, distill: DistillParams, adapt: AdaptParams,
    select: SelectParams, device: torch.device,
) -> TeacherLabels:  # fmt: skip
    checkpoint = Checkpoint.load(teacher_path)
    model = checkpoint.model(teacher_path).to(device, memory_format=torch.channels_last)
    norm = checkpoint.normalization
    normalised = to_device_tensor(images, norm["mean"], norm["std"], device)
    logits = adapted_logits(
        model, normalised, checkpoint.tta or "none", adapt.batchnorm_on, select.batch_size,
        select.mixed_precision,
    ).float()  # fmt: skip
    confidence = logits.softmax(1).max(1).values
    probabilities = (logits / distill.temperature).softmax(1)
    if adapt.balance_on == "prior":
        probabilities = sinkhorn(probabilities, prior_counts(adapt.prior, logits.shape[0]))
    keep = (confidence >= distill.confidence_threshold).cpu().numpy()
    return TeacherLabels(
        rows=np.flatnonzero(keep).astype(np.int64),
        probabilities=probabilities.cpu().numpy()[keep].astype(np.float32),
        confidence=confidence.cpu().numpy().astype(np.float32),
    )


def round_key(
    number: int, teacher_path: Path, student: ModelParams, distill: DistillParams,
    adapt: AdaptParams, train: TrainParams, select: SelectParams, prepared_dir: Path,
) -> str:  # fmt: skip
    """Digest of what round `number` depends on (its teacher's bytes, params, data, code)."""
    identity = {
        "round": number, "teacher": file_md5(teacher_path),
        "params": [dataclasses.asdict(section) for section in (distill, adapt, train, select)],
        "student": dataclasses.asdict(student),
        "data": {p.name: file_md5(p) for p in sorted(Path(prepared_dir).glob("*")) if p.is_file()},
        "code": stage_code_md5s("distill"),
    }  # fmt: skip
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_state(round_dir: Path, key: str) -> str | None:
    """ "done" or "labelled" when round_dir holds this key's work; else cleared, None."""
    record_path = round_dir / "round.json"
    if record_path.exists():
        try:
            record = read_json(record_path)
        except PipelineError:
            record = {}
        if record.get("key") == key:
            return record.get("status")
    shutil.rmtree(round_dir, ignore_errors=True)
    return None


def barrier() -> None:
    if current_world().size > 1:
        dist.barrier()


def select_student(
    round_dir: Path, select: SelectParams, prepared_dir: Path, device: torch.device,
    distillation: dict,
) -> dict:  # fmt: skip
    """Select's scoring over the round's checkpoints → round_dir/best.pt; the winner's row."""
    paths = sorted((round_dir / "checkpoints").glob("epoch_*.pt"))
    norm = Checkpoint.load(paths[-1]).normalization
    val_split = load_split(prepared_dir, "val")
    eval_set = to_device_set(
        val_split["images"], val_split["labels"], norm["mean"], norm["std"], device
    )
    best = choose_best(score_checkpoints(paths, eval_set, select, device))
    winner = winning_checkpoint(round_dir / "checkpoints", best)
    dataclasses.replace(winner, distillation=distillation).save(round_dir / "best.pt")
    return best


def run_round(
    number: int, teacher_path: Path, student: ModelParams, distill: DistillParams,
    adapt: AdaptParams, train: TrainParams, select: SelectParams, prepared_dir: Path,
    round_dir: Path, live_dir: Path, device: torch.device,
) -> dict:  # fmt: skip
    """One round: the teacher's labels, the student's training and its selection."""
    main = current_world().is_main
    key = round_key(number, teacher_path, student, distill, adapt, train, select, prepared_dir)
    state = round_state(round_dir, key) if main else None
    if current_world().size > 1:
        shared = [state]
        dist.broadcast_object_list(shared, src=0)
        state = shared[0]
    if state == "done":
        console.print(f"distill: round {number} reused ({round_dir}, its inputs unchanged)")
        return read_json(round_dir / "round.json")
    custom_test = load_split(prepared_dir, "custom_test")
    teacher_file = round_dir / TEACHER_NAME
    if state is None and main:
        labels = teacher_labels(teacher_path, custom_test["images"], distill, adapt, select, device)
        labels.save(teacher_file)
        write_json_atomic(round_dir / "round.json", {"key": key, "status": "labelled"})
    barrier()
    labels = TeacherLabels.load(teacher_file)
    console.print(
        f"distill: round {number}: teacher {teacher_path} labelled {labels.rows.size} of "
        f"{custom_test['ids'].size} custom-test images (confidence ≥ "
        f"{distill.confidence_threshold}, temperature {distill.temperature})"
    )
    pseudo_images = custom_test["images"][labels.rows]
    pseudo_classes = labels.probabilities.argmax(1)
    setup = setup_training(student, train, prepared_dir, device, (pseudo_images, pseudo_classes))
    first_index = setup.train_set[1].shape[0] - labels.rows.size
    targets = DistillTargets(
        first_index=first_index,
        probabilities=torch.from_numpy(labels.probabilities).to(device),
        temperature=distill.temperature, weight=distill.kd_weight,
    )  # fmt: skip
    training_key = resume.run_key(
        student, train, prepared_dir, device, stage="distill", extra={"round": key}
    )
    train_model(setup, student, train, training_key, round_dir / "checkpoints", live_dir, targets)
    record = {"key": key, "status": "done", "round": number}
    if main:
        distillation = {
            "round": number, "rounds": distill.rounds, "teacher": str(teacher_path),
            "teacher_md5": file_md5(teacher_path), "temperature": distill.temperature,
            "kd_weight": distill.kd_weight,
            "confidence_threshold": distill.confidence_threshold,
            "custom_test_images_used": int(labels.rows.size),
            "custom_test_labels": "none: the teacher's predictions (unlabelled images)",
            "labelled_train_images": int(first_index),
        }  # fmt: skip
        best = select_student(round_dir, select, prepared_dir, device, distillation)
        record |= {
            "teacher": str(teacher_path), "custom_test_images_used": int(labels.rows.size),
            "mean_teacher_confidence": float(labels.confidence.mean()),
            "student_val_accuracy": best["val_accuracy"], "student_checkpoint": best["checkpoint"],
            "student_weights": best["weights"], "student_tta": best["tta"],
            "model_params": best["model_params"],
        }  # fmt: skip
        write_json_atomic(round_dir / "round.json", record)
    barrier()
    return read_json(round_dir / "round.json")


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as temp_path:
        shutil.copyfile(source, temp_path)


def run(
    distill: DistillParams, adapt: AdaptParams, model_params: ModelParams, train: TrainParams,
    select: SelectParams, prepared_dir: Path = PREPARED_DIR, best_path: Path = BEST_PATH,
    distill_dir: Path = DISTILL_DIR, final_path: Path = FINAL_PATH,
    live_dir: Path = DISTILL_LIVE_DIR, metrics_path: Path = DISTILL_METRICS_PATH,
    params_path: Path = DEFAULT_PARAMS_PATH,
) -> None:  # fmt: skip
    rounds = distill.rounds if adapt.use_test_images else 0
    distill_dir.mkdir(parents=True, exist_ok=True)
    for stale in distill_dir.glob("round_*"):  # rounds beyond this run's
        if not stale.name.removeprefix("round_").isdigit() or int(stale.name[6:]) > rounds:
            shutil.rmtree(stale, ignore_errors=True)
    if not best_path.exists():
        raise PipelineError(f"{best_path}: not found; run the select stage first")
    if rounds == 0:
        copy_atomic(best_path, final_path)
        why = "distill.rounds: 0" if distill.rounds == 0 else "adapt.use_test_images: false"
        write_json_atomic(metrics_path, {"rounds": 0, "final": str(best_path)})
        console.print(f"distill: none ({why}); {final_path} is {best_path}")
        return
    student = student_model(distill, model_params)
    trainable = count_trainable_params(build_model(student))  # over budget: refused here
    device = start_workers(train, params_path, "distill")
    teacher_path, records = best_path, []
    for number in range(1, rounds + 1):
        round_dir = distill_dir / f"round_{number}"
        records.append(
            run_round(
                number,
                teacher_path,
                student,
                distill,
                adapt,
                train,
                select,
                prepared_dir,
                round_dir,
                live_dir / f"round_{number}",
                device,
            )  # fmt: skip
        )
        teacher_path = round_dir / "best.pt"
    if current_world().is_main:
        copy_atomic(teacher_path, final_path)
        write_json_atomic(metrics_path, {
            "rounds": rounds, "final": str(teacher_path), "student_model_params": trainable,
            "student_val_accuracy": records[-1]["student_val_accuracy"],
            "custom_test_images_used": records[-1]["custom_test_images_used"],
            "per_round": records,
        })  # fmt: skip
        console.print(
            f"distill: {rounds} round(s) → {final_path} (student val accuracy "
            f"{records[-1]['student_val_accuracy']:.4f})"
        )
    finish_workers()
