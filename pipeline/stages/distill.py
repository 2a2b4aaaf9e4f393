"""Stage 5, distill → models/final.pt: students taught by the selected model on the custom-test images.

The custom-test images come from another source than CIFAR-10, and they are unlabelled. A
teacher (round 1: select's winner, models/best.pt, a seed ensemble too, with its TTA and the
test-time adaptation of `adapt`) gives each of them soft labels: its softmax at
`distill.temperature`, balanced to the class prior when `adapt.balance: prior`. Images it is
less sure of than `distill.confidence_threshold` are left out. A student (the `model` section,
or `distill.student`; within `model.max_params`, checked before anything trains) then trains
with the `train` recipe on the labelled training images plus those images (loss:
engine/distillation.py's `DistillTargets`), and its checkpoints go through select's scoring on the
validation set. Its winner is the next round's teacher; the last one is models/final.pt, which
predict labels the custom test set with. `distill.rounds: 0` (or `adapt.use_test_images:
false`) makes final.pt a copy of best.pt: the pipeline without distillation.

Each round lives in models/distill/round_N/: `teacher.npz` (the soft labels, which image ids
they cover, the teacher's confidence), `checkpoints/`, `best.pt`, and `round.json`, whose `key`
digests everything the round depends on. The folder persists across runs (dvc.yaml): a round
whose key matches is reused, a killed student resumes from `.resume/` like train, and a round
with another key is redone. Under torchrun (`train.nproc` > 1) every rank trains; rank 0
labels, selects and writes. A round's work is stages/distill_round.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.config.load import DEFAULT_PARAMS_PATH
from pipeline.config.params import (
    AdaptParams,
    DistillParams,
    SelectParams,
    TrainParams,
    student_model,
)
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_json_atomic
from pipeline.models.registry import ModelConfig
from pipeline.paths import (
    BEST_PATH,
    DISTILL_DIR,
    DISTILL_LIVE_DIR,
    DISTILL_METRICS_PATH,
    FINAL_PATH,
    PREPARED_DIR,
)
from pipeline.reporting import console


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as temp_path:
        shutil.copyfile(source, temp_path)


def run(
    distill: DistillParams, adapt: AdaptParams, model_params: ModelConfig, train: TrainParams,
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
    # the folder is never empty: DVC warns of an empty output on every run
    write_json_atomic(distill_dir / "rounds.json", {"rounds": rounds})
    if rounds == 0:
        copy_atomic(best_path, final_path)
        why = "distill.rounds: 0" if distill.rounds == 0 else "adapt.use_test_images: false"
        write_json_atomic(metrics_path, {"rounds": 0, "final": str(best_path)})
        console.print(f"distill: none ({why}); {final_path} is {best_path}")
        return
    # the student's machinery imports torch: only a run with rounds pays for it
    from pipeline.engine.distributed import current_world
    from pipeline.engine.models import build_model, count_trainable_params
    from pipeline.stages.distill_round import run_round
    from pipeline.stages.train import finish_workers, start_workers

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
