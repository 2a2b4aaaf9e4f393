"""Stage 0, check → metrics/params_checked.txt: params.yaml checked whole, before any stage
removes its outputs.

DVC deletes a stage's outputs before it runs the stage's command, so a value the stage then
refused (`dvc exp run -S train.epochs=abc`) would cost the committed run's checkpoints and
training curves, and a rerun from scratch once fixed. This stage declares every params section,
so DVC runs it whenever a param (or the code that checks them) changes, and prepare, hence every
stage after it, depends on its output: a params.yaml that a stage would refuse stops `dvc repro`
here, with every output in place. Its output's text never changes, so a check that passes
reruns nothing after it.
"""

from __future__ import annotations

from pipeline.config.params import Params, student_model, with_teacher_budget
from pipeline.engine.device import resolve_device
from pipeline.engine.models import check_budget
from pipeline.engine.schedule import check_milestones
from pipeline.files import write_text_atomic
from pipeline.paths import PARAMS_CHECKED_PATH
from pipeline.reporting import console

CHECKED_TEXT = (
    "params.yaml passed `python -m pipeline check`. The prepare stage depends on this file, "
    "so that DVC runs the check before any stage removes its outputs; its text never changes.\n"
)


def run(params: Params) -> None:
    """Refuse what a stage would refuse of its params before computing anything (load_params
    has checked each key's type and range): the milestones against the epochs, the model
    and the distilled student against their budgets (counted on PyTorch's meta device, nothing
    allocated), and the devices the stages would use."""
    check_milestones(params.train)
    trainable = check_budget(with_teacher_budget(params.model, params.distill.teacher_max_params))
    if params.distill.rounds and params.adapt.use_test_images:
        check_budget(student_model(params.distill, params.model))
    for key, name in (
        ("train.device", params.train.device),
        ("select.device", params.select.device),
        ("predict.device", params.predict.device),
    ):
        resolve_device(name, key)
    write_text_atomic(PARAMS_CHECKED_PATH, CHECKED_TEXT)
    console.print(f"check: params.yaml is fine (model '{params.model.name}', {trainable:,} params)")
