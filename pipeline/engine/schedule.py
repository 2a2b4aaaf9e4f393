"""The run's shape in steps and epochs, and the learning-rate schedule: small pure functions.

`train.schedule`: multistep (×gamma at each milestone epoch), cosine, onecycle (linear rise to
the peak over `warmup_fraction` of the steps, then linear fall to `lr_end_factor`), constant.
cosine and onecycle span the steps actually run, so `train.max_steps` compresses them.
"""

from __future__ import annotations

import math

from pipeline.config.train_params import TrainParams, default_milestones
from pipeline.errors import PipelineError


def steps_per_epoch(image_count: int, params: TrainParams) -> int:
    """Optimizer steps per epoch; with drop_last a set smaller than one batch is still one step."""
    if params.drop_last:
        return max(1, image_count // params.batch_size)
    return math.ceil(image_count / params.batch_size)


def total_steps(steps_per_epoch: int, params: TrainParams) -> int:
    """Optimizer steps of the whole run: all epochs, or `train.max_steps` if that is fewer."""
    planned = steps_per_epoch * params.epochs
    return min(planned, params.max_steps) if params.max_steps else planned


def run_epochs(steps_per_epoch: int, params: TrainParams) -> int:
    """Epochs that get at least one step (the last may be partial under `train.max_steps`)."""
    return math.ceil(total_steps(steps_per_epoch, params) / steps_per_epoch)


def is_checkpoint_epoch(epoch: int, last_epoch: int, params: TrainParams) -> bool:
    """Whether a checkpoint is written after 1-based `epoch`: every `checkpoint_every`, and the
    last (computed per epoch: no set of epochs is built)."""
    return epoch == last_epoch or epoch % params.checkpoint_every == 0


def lr_factor(step: int, steps_per_epoch: int, params: TrainParams) -> float:
    """Multiplier of `train.lr` at optimizer step `step` (0-based) of the run.

    cosine and onecycle span the steps actually run (`total_steps`); multistep counts epochs.
    """
    run_steps = total_steps(steps_per_epoch, params)
    if params.schedule == "multistep":
        epoch = step // steps_per_epoch
        return params.gamma ** sum(epoch >= milestone for milestone in params.milestones)
    if params.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / run_steps))
    if params.schedule == "onecycle":  # linear rise to the peak, then linear fall
        warmup_steps = round(params.warmup_fraction * run_steps)
        if step < warmup_steps:
            fraction = step / warmup_steps
            return params.lr_start_factor + (1 - params.lr_start_factor) * fraction
        fraction = (step - warmup_steps) / max(1, run_steps - 1 - warmup_steps)
        return 1 + (params.lr_end_factor - 1) * fraction
    return 1.0


def whiten_bias_factor(step: int, learning_steps: int) -> float:
    """Multiplier of an airnet whitening bias's lr: a linear fall from 1 at the first step to 0
    at `learning_steps`, in place of the run's schedule (airbench94_muon's), so its learning
    ends smoothly; 0 after."""
    return max(0.0, 1 - step / learning_steps) if learning_steps else 0.0


def check_milestones(params: TrainParams) -> None:
    """Refuse multistep milestones at or past the last epoch: the lr would never decay there
    (the seed profile's [90, 180] with `-S train.epochs=2`). The fix keeps the recipe's shape."""
    late = [m for m in params.milestones or () if m >= params.epochs]
    if params.schedule == "multistep" and late:
        fix = (  # a one-epoch run has no later epoch to decay in
            f"set them inside the run, as the recipe's 45% and 90%: "
            f"-S 'train.milestones={default_milestones(params.epochs)}'"
            if params.epochs > 1
            else "a 1-epoch run has no epoch to decay in: -S train.schedule=constant"
        )
        raise PipelineError(
            f"params: train.milestones {params.milestones} lie at or past the last epoch "
            f"(train.epochs {params.epochs}, counted from 0): the lr would never decay at "
            f"{late}; {fix} (or python -m pipeline profile NAME --minutes M, which moves them "
            "with the epochs)"
        )
