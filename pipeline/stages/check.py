"""Stage 0, check → metrics/params_checked.txt: params.yaml checked whole, before any stage
removes its outputs.

DVC deletes a stage's outputs before it runs the stage's command, so a value the stage then
refused (`dvc exp run -S train.epochs=abc`) would cost the committed run's checkpoints and
training curves, and a rerun from scratch once fixed. This stage declares every params section,
so DVC runs it whenever a param (or the code that checks them) changes, and prepare, hence every
stage after it, depends on its output: a params.yaml that a stage would refuse stops `dvc repro`
here, with every other stage's outputs in place. Its output's text never changes, so a check
that passes reruns nothing after it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import Params, TrainParams, student_model, with_teacher_budget
from pipeline.config.stage_params import STAGE_PARAMS
from pipeline.config.yaml_files import read_yaml
from pipeline.engine import timing
from pipeline.engine.cpu_estimate import check_auto_cpu_estimate
from pipeline.engine.device import resolve_device
from pipeline.engine.distributed import nproc_problem
from pipeline.engine.models import check_budget
from pipeline.engine.schedule import check_milestones
from pipeline.engine.trainer import sync_batchnorm_problem
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic
from pipeline.models.registry import ModelConfig
from pipeline.paths import PARAMS_CHECKED_PATH
from pipeline.reporting import console
from pipeline.stages.prepare import stratified_holdout

MISSING = object()  # a declared key the params file (or dvc.lock's record) does not hold
CHECKED_TEXT = (
    "params.yaml passed `python -m pipeline check`. The prepare stage depends on this file, "
    "so that DVC runs the check before any stage removes its outputs; its text never changes.\n"
)


def run(params: Params, params_path: Path, lock_path: Path = Path("dvc.lock")) -> None:
    """Refuse what a stage would refuse of its params before computing anything (load_params
    has checked each key's type and range): the hold-out against the images per class, the
    milestones against the epochs, the model and the distilled student against their budgets
    (counted on PyTorch's meta device, nothing allocated). What also depends on this machine
    (its GPUs, the time a run `train.device: auto` would take on its CPU) is checked only for a
    stage whose params differ from dvc.lock's record, which DVC will run: a predict-only change
    on a CPU machine is not refused for a training that will not rerun."""
    batches = (
        (params.data.synthetic.train_images, params.data.synthetic.val_images)
        if params.data.source == "synthetic"
        else (timing.CIFAR_TRAIN_IMAGES, timing.CIFAR_TEST_IMAGES)
    )
    if params.prepare.val == "holdout":  # prepare's own rule, on labels of the data's sizes
        labels = np.arange(batches[0]) % NUM_CLASSES
        stratified_holdout(labels, params.prepare.holdout_images, params.prepare.seed)
    check_milestones(params.train)
    model = with_teacher_budget(params.model, params.distill.teacher_max_params)
    trainable = check_budget(model)
    if params.distill.rounds and params.adapt.use_test_images:
        check_budget(student_model(params.distill, params.model))
    will_run = stages_to_run(read_yaml(params_path), lock_path)
    for stage, key, name in (("select", "select.device", params.select.device),
                             ("predict", "predict.device", params.predict.device)):  # fmt: skip
        if stage in will_run:
            resolve_device(name, key)
    if "train" in will_run:
        check_training_here(model, params.train, timing.split_sizes(params.prepare, batches))
    write_text_atomic(PARAMS_CHECKED_PATH, CHECKED_TEXT)
    console.print(f"check: params.yaml is fine (model '{params.model.name}', {trainable:,} params)")


def stages_to_run(values: object, lock_path: Path) -> set[str]:
    """The stages DVC will run for their params: those whose declared params in `values` (the
    params file as DVC reads it) differ from what dvc.lock recorded for them, or that it has
    no record of."""
    try:
        lock = read_yaml(lock_path) if lock_path.exists() else {}
    except PipelineError:  # a damaged lock: DVC reruns what it cannot compare
        lock = {}
    recorded = lock.get("stages") if isinstance(lock, dict) else None
    values = values if isinstance(values, dict) else {}
    changed = set()
    for stage, names in STAGE_PARAMS.items():
        entry = recorded.get(stage) if isinstance(recorded, dict) else None
        params = entry.get("params") if isinstance(entry, dict) else None
        kept = params.get("params.yaml") if isinstance(params, dict) else None
        if not isinstance(kept, dict) or any(
            kept.get(name, MISSING) != declared_value(values, name) for name in names
        ):
            changed.add(stage)
    return changed


def declared_value(values: dict, name: str) -> object:
    """`values[section]` or `values[section][key]` for a declared name like "model.max_params"."""
    section, _, key = name.partition(".")
    if section not in values:
        return MISSING
    if not key:
        return values[section]
    inner = values[section]
    return inner.get(key, MISSING) if isinstance(inner, dict) else MISSING


def check_training_here(model: ModelConfig, train: TrainParams, sizes: tuple[int, int]) -> None:
    """The train stage's machine checks: its device, processes and SyncBatchNorm, and a run
    that `auto` would put on this GPU-less machine for over two hours (timed as doctor does)."""
    device = resolve_device(train.device, "train.device")
    for problem in (
        nproc_problem(train.nproc, device.type),
        sync_batchnorm_problem(train, train.nproc, device.type),
    ):
        if problem:
            raise PipelineError(problem)
    if train.device == "auto" and device.type == "cpu":
        cpu_train = dataclasses.replace(train, device="cpu")
        estimate = timing.estimate_training(model, cpu_train, device, *sizes)
        steps, seconds = estimate.run_length(train)  # train.max_steps counts
        check_auto_cpu_estimate(seconds / 60, steps, "auto")
