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

import numpy as np

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import Params, student_model, with_teacher_budget
from pipeline.engine import timing
from pipeline.engine.cpu_estimate import check_auto_cpu_estimate
from pipeline.engine.device import resolve_device
from pipeline.engine.distributed import nproc_problem
from pipeline.engine.models import check_budget
from pipeline.engine.schedule import check_milestones
from pipeline.engine.trainer import sync_batchnorm_problem
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic
from pipeline.paths import PARAMS_CHECKED_PATH
from pipeline.reporting import console
from pipeline.stages.prepare import stratified_holdout

CHECKED_TEXT = (
    "params.yaml passed `python -m pipeline check`. The prepare stage depends on this file, "
    "so that DVC runs the check before any stage removes its outputs; its text never changes.\n"
)


def run(params: Params) -> None:
    """Refuse what a stage would refuse of its params before computing anything (load_params
    has checked each key's type and range): the hold-out against the images per class, the
    milestones against the epochs, the model and the distilled student against their budgets
    (counted on PyTorch's meta device, nothing allocated), the devices and processes, and a run
    that `train.device: auto` would put on this GPU-less machine for over two hours (timed as
    doctor times it)."""
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
    for key, name in (("select.device", params.select.device),
                      ("predict.device", params.predict.device)):  # fmt: skip
        resolve_device(name, key)
    device = resolve_device(params.train.device, "train.device")
    for problem in (
        nproc_problem(params.train.nproc, device.type),
        sync_batchnorm_problem(params.train, params.train.nproc, device.type),
    ):
        if problem:
            raise PipelineError(problem)
    if params.train.device == "auto" and device.type == "cpu":
        train = dataclasses.replace(params.train, device="cpu")
        estimate = timing.estimate_training(model, train, device, *timing.split_sizes(
            params.prepare, batches))  # fmt: skip
        steps = estimate.steps_per_epoch * estimate.epochs
        check_auto_cpu_estimate(estimate.total_seconds / 60, steps, "auto")
    write_text_atomic(PARAMS_CHECKED_PATH, CHECKED_TEXT)
    console.print(f"check: params.yaml is fine (model '{params.model.name}', {trainable:,} params)")
