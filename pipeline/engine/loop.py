"""The training loop: `fit` trains a model in place on data already on its device.

`build_trainer` sets up everything one run's steps need (optimizer, lr schedule, EMA,
Lookahead, torch.compile, data-parallel wrapper, the data-order and augmentation generators);
`Trainer.state` / `Trainer.restore` save and continue a run exactly. `fit` then reads top to
bottom: each epoch shuffles, augments and steps through its batches, then (rank 0) evaluates
and hands the epoch's stats to its caller, who logs and saves.
"""

from __future__ import annotations

import functools
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import TrainParams, equal_share_problem
from pipeline.engine.augment import (
    AugmentState,
    augment_batch,
    augment_state,
    downscaled,
    mix_batch,
)
from pipeline.engine.device import Precision, choose_precision
from pipeline.engine.distributed import RANK_SEED_STRIDE, World, current_world
from pipeline.engine.optim import Lookahead, compiled, make_optimizer, make_scaler, optimizer_step
from pipeline.engine.schedule import (
    lr_factor,
    run_epochs,
    steps_per_epoch,
    total_steps,
    whiten_bias_factor,
)
from pipeline.engine.tta import evaluate
from pipeline.errors import PipelineError
from pipeline.reporting import console

IMAGE_SIDE = 32  # pixels: CIFAR-10's, every step after the low-resolution ones
ETA_PROBE_BATCHES = 3  # the CPU time estimate times the first ETA_PROBE_BATCHES + 1 batches
CPU_PROFILE_HINT_MINUTES = 60  # a longer CPU estimate also names the cpu profile
# train.device: auto fell back to the CPU and the run would take longer than this: stop, and say
# how to get a CPU-sized run or insist (train.device: cpu); an explicit cpu only gets the warning
AUTO_CPU_LIMIT_MINUTES = 120
# torch's warning when the run's first scheduler step comes before any optimizer step took effect
SKIPPED_FIRST_STEP_WARNING = (
    r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"
)
LabelledSet = tuple[torch.Tensor, torch.Tensor]  # normalised images, labels on the device


@dataclass(frozen=True)
class DistillTargets:
    """The custom-test images' soft labels in a student's training set (stages/distill_round.py).

    Rows `first_index` onward of the training set are the custom-test images; `probabilities`
    are the teacher's, at `temperature`. Their loss is the cross-entropy of the student's
    softmax at that temperature against them, × temperature² (Hinton et al.: the gradients
    then keep their size as the temperature changes) × `weight`; the labelled rows keep the
    label-smoothed cross-entropy. Every row's loss has the same shape, so batches mixing both
    kinds keep one shape (no recompiles).
    """

    first_index: int
    probabilities: torch.Tensor  # (M, classes) on the training device
    temperature: float
    weight: float


def distillation_batch(
    distill: DistillTargets, indices: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets (N, classes), temperature (N,), weight (N,)) of a batch's rows."""
    pseudo = indices >= distill.first_index
    smoothed = F.one_hot(labels, NUM_CLASSES).float() * (1 - smoothing) + smoothing / NUM_CLASSES
    teacher = distill.probabilities[(indices - distill.first_index).clamp_min(0)]
    targets = torch.where(pseudo[:, None], teacher, smoothed)
    ones = torch.ones_like(indices, dtype=torch.float32)
    temperature = torch.where(pseudo, distill.temperature, ones)
    weight = torch.where(pseudo, distill.weight * distill.temperature**2, ones)
    return targets, temperature, weight


def distillation_loss(
    logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of weight × cross-entropy(softmax(logits / temperature), targets)."""
    log_probabilities = F.log_softmax(logits.float() / temperature[:, None], dim=1)
    return (weight * -(targets * log_probabilities).sum(1)).mean()


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


class StateMismatch(Exception):
    """A saved state that loads but does not fit the run (another shape, a missing piece)."""


def random_states() -> dict[str, Any]:
    """The global generators' states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        # the run's own GPU only: a resume with fewer (or other) GPUs visible still fits
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],
    }


def restore_random_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"][0])  # the current device's: the run's GPU


@dataclass
class Trainer:
    """What one run's optimizer steps need, and where the run is (`step`, `first_epoch`)."""

    model: nn.Module
    params: TrainParams
    world: World
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Any  # timm's ModelEmaV3, or None
    lookahead: Lookahead | None
    stepped: nn.Module  # what the optimizer steps run through (compiled, DDP-wrapped)
    evaluated: nn.Module  # the raw weights for validation (compiled, never DDP)
    evaluated_ema: nn.Module | None
    order_generator: torch.Generator  # data order: the same on every rank
    augment: AugmentState
    batches_per_epoch: int
    run_steps: int
    whiten_bias_steps: int  # the first steps in which an airnet's whitening bias learns
    low_res_steps: int  # the first steps on batches downscaled to train.low_res_pixels
    precision: Precision  # engine/device.py's choice for this GPU (or the CPU)
    scaler: torch.amp.GradScaler | None  # fp16's loss scaler
    distill: DistillTargets | None = None  # a student's soft labels (distill stage)
    step: int = 0  # optimizer steps done
    first_epoch: int = 1

    def state(self, epoch: int) -> dict:
        """Everything that continues the run after `epoch` exactly as if it had never stopped."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.average if self.lookahead is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment.generator.get_state(),
            "host_generator": self.augment.host_generator.get_state(),
            "random": random_states(), "step": self.step, "epoch": epoch,
        }  # fmt: skip

    def restore(self, state: dict) -> None:
        """Continue from `state` (a `state()`); a state that does not fit raises StateMismatch."""
        device = next(self.model.parameters()).device
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            if self.lookahead is not None:
                self.lookahead.average = {k: v.to(device) for k, v in state["lookahead"].items()}
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.order_generator.set_state(state["order_generator"])
            self.augment.generator.set_state(state["augment_generator"])
            self.augment.host_generator.set_state(state["host_generator"])
            restore_random_states(state["random"])
            self.step, self.first_epoch = state["step"], state["epoch"] + 1
            if self.world.rank > 0:  # the state holds rank 0's streams: other ranks draw their own
                rank_seed = self.params.seed + self.world.rank * RANK_SEED_STRIDE + self.first_epoch
                self.augment.generator.manual_seed(rank_seed)
                self.augment.host_generator.manual_seed(rank_seed)
                torch.manual_seed(rank_seed)  # dropout
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
            raise StateMismatch(f"{type(error).__name__}: {error}") from None


def build_trainer(
    model: nn.Module, params: TrainParams, image_count: int,
    normalization: tuple[list[float], list[float]], device: torch.device,
) -> Trainer:  # fmt: skip
    world = current_world()  # under torchrun: this rank's share of each batch, rank 0 reports
    problem = equal_share_problem(params.batch_size, params.drop_last, world.size)
    if problem:  # torchrun started by hand (several machines) skips the params' own check
        raise PipelineError(problem)
    order_generator = torch.Generator().manual_seed(params.seed)  # the same on every rank
    rank_seed = params.seed + world.rank * RANK_SEED_STRIDE if world.rank else None
    augment = augment_state(image_count, *normalization, params.seed, device, rank_seed)
    if params.sync_batchnorm and world.size > 1:
        if device.type != "cuda":
            raise PipelineError(
                "train.sync_batchnorm: needs CUDA (torch's SyncBatchNorm is GPU-only)"
            )
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # its BatchNorm children, in place
    batches_per_epoch = steps_per_epoch(image_count, params)
    run_steps = total_steps(batches_per_epoch, params)
    precision = choose_precision(device, params.mixed_precision, params.autocast_dtype)
    optimizer = make_optimizer(model, params, precision)
    whiten_bias_steps = min(run_steps, getattr(model, "whiten_bias_epochs", 0) * batches_per_epoch)
    # 0 when low_res_pixels is; the last step always at 32 (BatchNorm's statistics with it)
    low_res_steps = min(round(params.low_res_fraction * run_steps), run_steps - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [  # one multiplier per param group: the whitening bias's ends with its learning steps
            functools.partial(whiten_bias_factor, learning_steps=whiten_bias_steps)
            if group.get("whiten_bias")
            else functools.partial(lr_factor, steps_per_epoch=batches_per_epoch, params=params)
            for group in optimizer.param_groups
        ],
    )
    ema = None
    if params.ema_decay:
        from timm.utils import ModelEmaV3  # only runs that ask for EMA pay for importing timm

        ema = ModelEmaV3(model, decay=params.ema_decay, use_warmup=True)
    lookahead = Lookahead(model, run_steps) if params.lookahead else None
    evaluated = compiled(model, params, device)
    stepped = evaluated
    if world.size > 1:  # DDP averages the gradients over the ranks; evaluation stays plain
        ids = [device.index] if device.type == "cuda" else None
        # a whitening bias that stops getting gradients inside the run: DDP must expect that
        # (it costs a graph traversal per step, so only then)
        unused = 0 < whiten_bias_steps < run_steps
        stepped = compiled(
            DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused),
            params, device,
        )  # fmt: skip
        evaluated = model
    evaluated_ema = compiled(ema.module, params, device) if ema is not None else None
    return Trainer(model, params, world, optimizer, scheduler, ema, lookahead, stepped, evaluated,
                   evaluated_ema, order_generator, augment, batches_per_epoch, run_steps,
                   whiten_bias_steps, low_res_steps, precision,
                   make_scaler(precision, device))  # fmt: skip


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


def estimated_run_seconds(probe_seconds: float, trainer: Trainer) -> float:
    """The whole run's training time from the seconds its first ETA_PROBE_BATCHES + 1 steps
    took. A step at train.low_res_pixels is counted as its share of a 32-pixel step's pixels
    (24 px: 0.56), so a run that starts at low resolution is not estimated at its cheap first
    steps' pace. Benchmark 1's probe measured 0.51 at 24 px: such a run is estimated ~6% short."""
    probed = ETA_PROBE_BATCHES + 1
    low_res_cost = (trainer.params.low_res_pixels / IMAGE_SIDE) ** 2  # unused without low-res steps

    def cost(steps: int) -> float:  # the first `steps` steps, in 32-pixel steps
        low = min(steps, trainer.low_res_steps)
        return low * low_res_cost + (steps - low)

    return probe_seconds / cost(probed) * cost(trainer.run_steps)


def cpu_estimate_warning(minutes: float, steps: int, device_setting: str = "auto") -> str:
    """The estimate of a run on the CPU, in one line; a warning naming the CPU profile as the
    way out only over an hour (a short CPU run, the `cpu` profile's, is a normal run)."""
    where = (
        "no CUDA GPU found (train.device: auto)"
        if device_setting == "auto"
        else "train.device: cpu"
    )
    text = f"train: on the CPU ({where}), estimated {minutes:.1f} min for {steps} steps"
    if minutes > CPU_PROFILE_HINT_MINUTES:
        text = (
            f"[yellow]warning: {text}; without a GPU, `python -m pipeline profile cpu` trains "
            "the best model this pipeline measured in about 15 minutes on 2 cores (BENCHMARKS.md)"
        )
    return text


def check_auto_cpu_estimate(minutes: float, steps: int, device_setting: str) -> None:
    """Stop a CPU run that `train.device: auto` chose (no GPU found) and that would take over
    AUTO_CPU_LIMIT_MINUTES; `train.device: cpu` is the user's own choice and trains."""
    if device_setting == "auto" and minutes > AUTO_CPU_LIMIT_MINUTES:
        raise PipelineError(
            f"train: no GPU found (train.device: auto), and on this CPU the run's {steps} steps "
            f"would take about {minutes / 60:.1f} h; `python -m pipeline profile cpu` trains the "
            "best CPU-sized model this pipeline measured in about 15 minutes (BENCHMARKS.md), or "
            "set train.device: cpu to train this run on the CPU anyway"
        )


def train_epoch(
    trainer: Trainer, train_set: LabelledSet, epoch: int, progress: Progress | None,
    batch_task: Any,
) -> dict[str, float]:  # fmt: skip
    """One epoch of optimizer steps (fewer when train.max_steps ends the run inside it): its
    training loss, accuracy, last lr, images/s and seconds, over every rank's share."""
    params, world = trainer.params, trainer.world
    train_images, train_labels = train_set
    device, image_count = train_images.device, train_labels.shape[0]
    mixing = params.mixup_alpha > 0 or params.cutmix_alpha > 0
    trainer.model.train()
    epoch_batches = min(trainer.batches_per_epoch, trainer.run_steps - trainer.step)
    images_per_epoch = min(image_count, epoch_batches * params.batch_size)
    if progress is not None:
        progress.reset(batch_task, total=epoch_batches)
    order = torch.randperm(image_count, generator=trainer.order_generator).to(device)
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
    correct = torch.zeros((), device=device)
    epoch_started = time.perf_counter()
    for batch_index in range(epoch_batches):
        indices = order[batch_index * params.batch_size : (batch_index + 1) * params.batch_size]
        indices = world.local_slice(indices) if world.size > 1 else indices
        images = augment_batch(train_images[indices], indices, epoch, params, trainer.augment)
        if trainer.step < trainer.low_res_steps:  # a new shape: compiled models recompile once
            images = downscaled(images, params.low_res_pixels)
        labels = train_labels[indices]
        loss_function = None
        if trainer.distill is not None:
            targets, temperature, weight = distillation_batch(
                trainer.distill, indices, labels, params.label_smoothing
            )
        else:
            targets = F.one_hot(labels, NUM_CLASSES).float() if mixing else labels
        if mixing:  # never with distill: params refuse mixup and cutmix for a student
            images, targets = mix_batch(
                images,
                targets,
                params.mixup_alpha,
                params.cutmix_alpha,
                trainer.augment.generator,
                trainer.augment.host_generator,
            )
        if trainer.distill is not None:
            loss_function = functools.partial(
                distillation_loss, temperature=temperature, weight=weight
            )
        if trainer.whiten_bias_steps:  # detached from its last learning step on: one recompile
            trainer.model.whiten_bias_learns = trainer.step < trainer.whiten_bias_steps
        loss, logits = optimizer_step(
            trainer.stepped, trainer.optimizer, images, targets, params, trainer.precision,
            loss_function, trainer.scaler,
        )  # fmt: skip
        step_lr = trainer.optimizer.param_groups[0]["lr"]  # the lr this step used, before the next
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
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        if progress is not None:
            progress.update(batch_task, advance=1)
        if epoch == 1 and batch_index == ETA_PROBE_BATCHES and device.type == "cpu":
            estimate = torch.tensor(
                estimated_run_seconds(time.perf_counter() - epoch_started, trainer)
            )
            if world.size > 1:  # the slowest rank's: every rank stops, or none does
                dist.all_reduce(estimate, op=dist.ReduceOp.MAX)
            minutes = estimate.item() / 60
            check_auto_cpu_estimate(minutes, trainer.run_steps, params.device)
            console.print(cpu_estimate_warning(minutes, trainer.run_steps, params.device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - epoch_started
    if world.size > 1:  # the epoch's loss and accuracy over every rank's share
        for total in (loss_sum, correct):
            dist.all_reduce(total)
    if not math.isfinite(loss_sum.item()):  # every rank sees the same sum: all stop together
        raise PipelineError(
            f"train: the training loss became {loss_sum.item()} in epoch {epoch}: the weights "
            "diverged; lower train.lr (or raise train.batch_size) and run again"
        )
    return {
        "train_loss": loss_sum.item() / images_per_epoch,
        "train_accuracy": correct.item() / images_per_epoch,
        "learning_rate": step_lr,
        "images_per_second": images_per_epoch / seconds,
        "seconds": seconds,
    }
