"""The training loop: `fit` trains a model in place on data already on its device.

`fit` reads top to bottom: build the trainer (engine/trainer.py), then each epoch shuffles,
steps through its batches and (rank 0) evaluates and hands the epoch's stats to its caller, who
logs and saves. An epoch (`train_epoch`) is a loop of three named pieces: `prepare_batch` (the
augmented images at the step's resolution, their targets and loss), the optimizer step, and
`after_step` (the lr schedule, Lookahead, EMA).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import TrainParams
from pipeline.engine.augment import augment_batch, downscaled, mix_batch
from pipeline.engine.cpu_estimate import ETA_PROBE_BATCHES, probe_cpu_time
from pipeline.engine.distillation import DistillTargets, distillation_batch, distillation_loss
from pipeline.engine.optim import optimizer_step
from pipeline.engine.schedule import run_epochs
from pipeline.engine.trainer import Trainer, build_trainer
from pipeline.engine.tta import evaluate
from pipeline.errors import PipelineError

# torch's warning when the run's first scheduler step comes before any optimizer step took effect
SKIPPED_FIRST_STEP_WARNING = (
    r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"
)
LabelledSet = tuple[torch.Tensor, torch.Tensor]  # normalised images, labels on the device


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float  # on the augmented (and possibly mixed) batches, against the main label
    val_loss: float
    val_accuracy: float  # raw weights, under train.eval_tta
    learning_rate: float  # of the non-bias params, at the epoch's last step
    images_per_second: float  # training images per second of this epoch's training loop
    seconds: float  # this epoch's training loop, without the validation pass
    val_accuracy_ema: float | None = None  # the EMA weights, when train.ema_decay > 0


def fit(
    model: nn.Module,
    params: TrainParams,
    train_set: LabelledSet,
    val_set: LabelledSet,
    normalization: tuple[list[float], list[float]],
    on_epoch: Callable[[EpochStats, nn.Module | None], None],
    progress: Progress | None = None,
    resume_state: dict | None = None,
    save_state: Callable[[int, Callable[[], dict]], None] | None = None,
    distill: DistillTargets | None = None,
) -> nn.Module | None:
    """Train `model` in place; `train_set` and `val_set` are normalised images and labels on the model's device.

    `normalization` is the (mean, std) of dataset.json the images were normalised with
    (TrivialAugment undoes it to work on pixels).
    `on_epoch(stats, ema_model)` runs after each epoch's validation (logging, checkpoints);
    `ema_model` is the EMA of the weights (`train.ema_decay` > 0), else None. Data order and
    augmentation follow `params.seed` through their own generators. Returns the EMA model.
    After it, `save_state(epoch, state)` gets a function that builds the whole training state
    (records/resume.py keeps it); `resume_state`, such a state, continues a run after its epoch
    exactly as if it had never stopped. `distill`: the training set's last rows are a
    student's custom-test images with the teacher's soft labels.
    """
    device = train_set[0].device
    trainer = build_trainer(model, params, train_set[1].shape[0], normalization, device)
    trainer.distill = distill
    if resume_state is not None:
        trainer.restore(resume_state)
    batch_task = (
        progress.add_task("batch", total=trainer.batches_per_epoch, status="") if progress else None
    )
    ema_model = trainer.ema.module if trainer.ema is not None else None
    for epoch in range(trainer.first_epoch, run_epochs(trainer.batches_per_epoch, params) + 1):
        stats = train_epoch(trainer, train_set, epoch, progress, batch_task)
        if not trainer.world.is_main:  # rank 0 evaluates, logs and saves; the others train on
            continue
        stats["val_accuracy"], stats["val_loss"] = evaluate(
            trainer.evaluated, *val_set, params.eval_tta, params.eval_batch_size,
            trainer.precision,
        )  # fmt: skip
        if trainer.evaluated_ema is not None:
            stats["val_accuracy_ema"], _ = evaluate(
                trainer.evaluated_ema, *val_set, params.eval_tta, params.eval_batch_size,
                trainer.precision,
            )  # fmt: skip
        on_epoch(EpochStats(epoch=epoch, **stats), ema_model)
        if save_state is not None:
            save_state(epoch, lambda epoch=epoch: trainer.state(epoch))
    return ema_model


def train_epoch(
    trainer: Trainer, train_set: LabelledSet, epoch: int, progress: Progress | None,
    batch_task: object,
) -> dict[str, float]:  # fmt: skip
    """One epoch of optimizer steps (fewer when train.max_steps ends the run inside it): its
    training loss, accuracy, last lr, images/s and seconds, over every rank's share."""
    params, labels_of_set = trainer.params, train_set[1]
    trainer.model.train()
    batches = min(trainer.batches_per_epoch, trainer.run_steps - trainer.step)
    if progress is not None:
        progress.reset(batch_task, total=batches)
    order = torch.randperm(labels_of_set.shape[0], generator=trainer.order_generator)
    order = order.to(labels_of_set.device)
    loss_sum = torch.zeros((), device=labels_of_set.device)  # on the device: no sync per batch
    correct = torch.zeros((), device=labels_of_set.device)
    started = time.perf_counter()
    for batch_index in range(batches):
        indices = order[batch_index * params.batch_size : (batch_index + 1) * params.batch_size]
        indices = trainer.world.local_slice(indices) if trainer.world.size > 1 else indices
        images, targets, loss_function = prepare_batch(trainer, train_set, indices, epoch)
        loss, logits = optimizer_step(
            trainer.stepped, trainer.optimizer, images, targets, params, trainer.precision,
            loss_function, trainer.scaler,
        )  # fmt: skip
        step_lr = after_step(trainer)
        labels = labels_of_set[indices]
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        if progress is not None:
            progress.update(batch_task, advance=1)
        if epoch == 1 and batch_index == ETA_PROBE_BATCHES and labels.device.type == "cpu":
            probe_cpu_time(trainer, started)
    images_seen = min(labels_of_set.shape[0], batches * params.batch_size)
    return epoch_totals(trainer, loss_sum, correct, images_seen, started, epoch) | {
        "learning_rate": step_lr
    }


def prepare_batch(
    trainer: Trainer, train_set: LabelledSet, indices: torch.Tensor, epoch: int
) -> tuple[torch.Tensor, torch.Tensor, Callable | None]:
    """The batch as the optimizer step takes it: its images augmented (and downscaled in the
    run's low-resolution steps), its targets (a student's soft labels, or mixup/cutmix's mixed
    one-hot labels, else the labels), and their loss (None: label-smoothed cross-entropy)."""
    params = trainer.params
    images = augment_batch(train_set[0][indices], indices, epoch, params, trainer.augment)
    if trainer.step < trainer.low_res_steps:  # a new shape: compiled models recompile once
        images = downscaled(images, params.low_res_pixels)
    labels = train_set[1][indices]
    mixing = params.mixup_alpha > 0 or params.cutmix_alpha > 0
    loss_function = None
    if trainer.distill is not None:  # never mixed: params refuse mixup and cutmix for a student
        targets, temperature, weight = distillation_batch(
            trainer.distill, indices, labels, params.label_smoothing
        )
        loss_function = functools.partial(distillation_loss, temperature=temperature, weight=weight)
    else:
        targets = F.one_hot(labels, NUM_CLASSES).float() if mixing else labels
    if mixing:
        images, targets = mix_batch(
            images, targets, params.mixup_alpha, params.cutmix_alpha, trainer.augment.generator,
            trainer.augment.host_generator,
        )  # fmt: skip
    if trainer.whiten_bias_steps:  # detached from its last learning step on: one recompile
        trainer.model.whiten_bias_learns = trainer.step < trainer.whiten_bias_steps
    return images, targets, loss_function


def after_step(trainer: Trainer) -> float:
    """The lr schedule's step, then Lookahead's and EMA's; the lr the step just taken used."""
    step_lr = trainer.optimizer.param_groups[0]["lr"]  # before the schedule moves it on
    if trainer.scaler is not None and trainer.step == 0:
        with warnings.catch_warnings():  # fp16's scaler skipped an overflowing first step:
            # the schedule moves on regardless, as torch's AMP recipe does; not a misuse
            warnings.filterwarnings("ignore", SKIPPED_FIRST_STEP_WARNING, UserWarning)
            trainer.scheduler.step()
    else:
        trainer.scheduler.step()
    trainer.step += 1
    if trainer.lookahead is not None:
        trainer.lookahead.after_step(trainer.step)
    if trainer.ema is not None:
        trainer.ema.update(trainer.model, step=trainer.step)
    return step_lr


def epoch_totals(
    trainer: Trainer, loss_sum: torch.Tensor, correct: torch.Tensor, images: int,
    started: float, epoch: int,
) -> dict[str, float]:  # fmt: skip
    """The epoch's loss and accuracy over every rank's share, and its pace; a loss that is no
    longer finite stops the run (every rank sees the same sum: all stop together)."""
    if loss_sum.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if trainer.world.size > 1:
        for total in (loss_sum, correct):
            dist.all_reduce(total)
    if not math.isfinite(loss_sum.item()):
        raise PipelineError(
            f"train: the training loss became {loss_sum.item()} in epoch {epoch}: the weights "
            "diverged; lower train.lr (or raise train.batch_size) and run again"
        )
    return {
        "train_loss": loss_sum.item() / images,
        "train_accuracy": correct.item() / images,
        "images_per_second": images / seconds,
        "seconds": seconds,
    }
