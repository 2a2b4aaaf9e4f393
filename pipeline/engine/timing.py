"""How long a recipe trains on this machine, measured: a few real optimizer steps of its model
and batch (augmentation, forward, backward, update), warm-up excluded, scaled to its steps.

`python -m pipeline doctor` prints these estimates; `profile NAME --minutes M` sets a profile's
epochs from them; the benchmarks fit runs to a time budget with them (bench/common.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch

from pipeline.config.params import PrepareParams
from pipeline.config.train_params import TrainParams, milestones_within
from pipeline.engine.augment import augment_batch, augment_state, downscaled
from pipeline.engine.device import choose_precision
from pipeline.engine.models import build_model
from pipeline.engine.optim import compiled, make_optimizer, optimizer_step
from pipeline.engine.schedule import run_epochs, steps_per_epoch, total_steps
from pipeline.engine.tta import predict_logits
from pipeline.models.airnet import WHITENING_IMAGES
from pipeline.models.registry import ModelConfig

UNTIMED_STEPS = 3  # compile, autotuning, allocator warm-up
TIMED_STEPS = 5  # optimizer steps timed (their median counts)
MAX_TIMED_STEPS = 50  # min_timed_seconds stops adding steps here
# CIFAR-10's per-channel mean and std (0–1 scale): what random stand-in images are normalised by
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000  # the real data's split


def split_sizes(
    prepare: PrepareParams, batches: tuple[int, int] = (CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES)
) -> tuple[int, int]:
    """(training images, validation images) that prepare makes of `batches` (the training
    batches' and test_batch's image counts: the real CIFAR-10's unless given)."""
    train_batches, test_batch = batches
    if prepare.val == "test_batch":
        return train_batches, test_batch
    train = train_batches - prepare.holdout_images
    return train + (test_batch if prepare.train_on_test_batch else 0), prepare.holdout_images


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(
    model: torch.nn.Module,
    params: TrainParams,
    train_set: tuple[torch.Tensor, torch.Tensor],
    normalization: tuple[list[float], list[float]],
    pixels: int = 0,
    untimed_steps: int = UNTIMED_STEPS,
    timed_steps: int = TIMED_STEPS,
    min_timed_seconds: float = 0.0,
) -> float:
    """Median time of training steps (augmentation, forward, backward, SGD) of a throwaway copy
    of `model` on batches of `params.batch_size` (at most the set's size), downscaled to
    `pixels` (0: at 32).

    Not timed: the EMA update, Lookahead pulls, mixup/cutmix and the scheduler, so a budgeted
    run with those on runs a little over its budget (its measured training time is reported).

    The first steps are untimed: they include torch.compile's compilation and cuDNN
    autotuning, which a run pays once. The median of the timed steps (each synchronised)
    ignores a step that hit a one-off recompilation. Short steps are timed until
    `min_timed_seconds` have passed too (at most MAX_TIMED_STEPS): a median of three
    half-second CPU steps moves by ±15% from one call to the next.
    """
    probe = copy.deepcopy(model)
    device = train_set[0].device
    precision = choose_precision(device, params.mixed_precision, params.autocast_dtype)
    optimizer = make_optimizer(probe, params, precision)
    network = compiled(probe, params, device)
    state = augment_state(train_set[1].shape[0], *normalization, 0, device)
    batch = min(params.batch_size, train_set[1].shape[0])
    timings: list[float] = []
    step = 0
    while len(timings) < timed_steps or (
        sum(timings) < min_timed_seconds and len(timings) < MAX_TIMED_STEPS
    ):
        started = time.perf_counter()
        indices = torch.randint(0, train_set[1].shape[0], (batch,), device=device)
        images = augment_batch(train_set[0][indices], indices, 1, params, state)
        if pixels:
            images = downscaled(images, pixels)
        optimizer_step(network, optimizer, images, train_set[1][indices], params, precision)
        _synchronize(device)
        if step >= untimed_steps:
            timings.append(time.perf_counter() - started)
        step += 1
    return statistics.median(timings)


def planned_seconds_per_step(
    model: torch.nn.Module,
    params: TrainParams,
    train_set: tuple[torch.Tensor, torch.Tensor],
    normalization: tuple[list[float], list[float]],
    probe=seconds_per_step,
) -> tuple[float, dict[int, float]]:
    """The mean step time of the recipe, and each side's (pixels → seconds per step): with
    train.low_res_pixels, its share of steps at that side and the rest at 32 pixels, each side
    probed (`probe`: `seconds_per_step`)."""
    sides = {32: probe(model, params, train_set, normalization)}
    if not params.low_res_pixels:
        return sides[32], sides
    sides[params.low_res_pixels] = probe(
        model, params, train_set, normalization, params.low_res_pixels
    )
    share = params.low_res_fraction
    return share * sides[params.low_res_pixels] + (1 - share) * sides[32], sides


def fit_to_budget(params: TrainParams, steps_per_epoch: int, steps: int) -> TrainParams:
    """The same recipe compressed into `steps` optimizer steps (the last epoch may be partial):
    onecycle and cosine are defined on the share of steps done, so they compress by themselves;
    multistep milestones move proportionally."""
    if steps >= steps_per_epoch * params.epochs:
        return params
    epochs = math.ceil(steps / steps_per_epoch)
    share = steps / (steps_per_epoch * params.epochs)
    moved = {}
    if params.milestones is not None:
        moved["milestones"] = [max(1, round(m * share)) for m in params.milestones]
    return dataclasses.replace(
        params, epochs=epochs, max_steps=steps, checkpoint_every=epochs, **moved
    )


def with_epochs(params: TrainParams, epochs: int) -> TrainParams:
    """The recipe over `epochs` whole epochs: multistep milestones move in proportion, each
    before the last epoch (the lr still decays where the recipe has it decay; a milestone at
    the last epoch would never act), the other schedules follow by themselves."""
    moved = {}
    if params.milestones is not None:
        share = epochs / params.epochs
        moved["milestones"] = milestones_within(epochs, [m * share for m in params.milestones])
    return dataclasses.replace(params, epochs=epochs, max_steps=0, **moved)


@dataclass(frozen=True)
class TrainingEstimate:
    """A recipe's training time on this machine, from timed steps and a timed validation."""

    seconds_per_step: float  # the recipe's mean step (low-resolution steps at their share)
    steps_per_epoch: int
    epochs: int
    validation_seconds: float  # per epoch: train.eval_tta over the validation set, EMA too

    @property
    def epoch_seconds(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch + self.validation_seconds

    @property
    def total_seconds(self) -> float:
        return self.epoch_seconds * self.epochs

    def run_length(self, params: TrainParams) -> tuple[int, float]:
        """(optimizer steps, seconds) of a run of `params`, which train.max_steps may end
        before its last epoch."""
        steps = total_steps(self.steps_per_epoch, params)
        validations = run_epochs(self.steps_per_epoch, params)
        return steps, self.seconds_per_step * steps + self.validation_seconds * validations

    def epochs_for(self, seconds: float) -> int:
        """Whole epochs that fill `seconds` most closely (at least one)."""
        return max(1, round(seconds / self.epoch_seconds))


def estimate_training(
    model_params: ModelConfig, params: TrainParams, device: torch.device, train_images: int,
    val_images: int,
) -> TrainingEstimate:  # fmt: skip
    """Time `params`' steps of `model_params`' model on `device`, at its own batch size, with
    random stand-in images (speed does not depend on what the pixels show), and one validation
    batch: what `doctor` prints and `profile --minutes` fits to. A CPU step takes seconds, so
    there it times fewer steps."""
    # (untimed, timed, at least this many seconds timed) per side: a CPU step takes seconds
    untimed, timed, least = (
        (1, 3, 8.0) if device.type == "cpu" else (UNTIMED_STEPS, TIMED_STEPS, 1.0)
    )
    # a stand-in as large as the training set: gathering a batch out of 50,000 images misses the
    # caches as training does (out of 1,000 the CPU probe ran 15-20% fast)
    count = max(2 * params.batch_size, train_images)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255
    normalised = (pixels[:WHITENING_IMAGES].float() - mean) / std
    if params.images_on_device == "uint8":  # as train keeps them: normalised batch by batch
        images = pixels.to(device)
    else:
        images = ((pixels.float() - mean) / std).to(device)
    del pixels
    labels = torch.randint(0, 10, (count,), generator=generator).to(device)
    model = build_model(model_params).to(device, memory_format=torch.channels_last)
    if hasattr(model, "init_whitening"):
        model.init_whitening(normalised.to(device))

    def probe(model, probe_params, train_set, normalization, side=0) -> float:  # noqa: ANN001
        return seconds_per_step(
            model, probe_params, train_set, normalization, side, untimed, timed, least
        )

    step, _ = planned_seconds_per_step(
        model, params, (images, labels), (CIFAR_MEAN, CIFAR_STD), probe
    )
    precision = choose_precision(device, params.mixed_precision, params.autocast_dtype)
    eval_batch = min(params.eval_batch_size, WHITENING_IMAGES)
    val_batch = normalised[:eval_batch].to(device)
    predict_logits(model, val_batch, params.eval_tta, eval_batch, precision)  # warm-up
    _synchronize(device)
    started = time.perf_counter()
    predict_logits(model, val_batch, params.eval_tta, eval_batch, precision)
    _synchronize(device)
    evaluations = 2 if params.ema_decay else 1  # the raw weights, and the EMA's
    validation = (time.perf_counter() - started) / eval_batch * val_images * evaluations
    return TrainingEstimate(
        seconds_per_step=step,
        steps_per_epoch=steps_per_epoch(train_images, params),  # train.max_steps not counted
        epochs=params.epochs,
        validation_seconds=validation,
    )
