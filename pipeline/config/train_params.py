"""The `train` section: a training recipe as a frozen dataclass, with every key's default
(airbench94's recipe scaled to 200 epochs: the `default` profile), validated when built.

Some keys are read by one schedule or optimizer only (`SCHEDULE_DEFAULTS`, `OPTIMIZER_DEFAULTS`):
the chosen one's take their defaults when not set, and another's are refused. A key that does
nothing would still change dvc.lock and the resume key, and so retrain from scratch for nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from pipeline.config.checks import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    require,
    require_range,
    require_seed,
)
from pipeline.errors import PipelineError

DeviceName = Literal["auto", "cpu", "cuda"]  # auto: CUDA when present, else the CPU
MAX_STEPS = 10**9  # train.max_steps
# train.low_res_pixels: an airnet's feature map after its last group is then still 1×1 or more
MIN_LOW_RES_PIXELS = 16
MAX_PROCESSES = 1024  # train.nproc


def milestones_within(epochs: int, positions: list[float]) -> list[int]:
    """Multistep milestones at `positions` (epochs, rounded) of a run of `epochs`, each from
    epoch 1 and before the last (epochs count from 0: one at `epochs` never acts)."""
    last = max(1, epochs - 1)
    return sorted({max(1, min(last, round(position))) for position in positions})


def default_milestones(epochs: int) -> list[int]:
    """multistep's milestones for a run of `epochs`: at 45% and 90% of it, as the seed recipe's
    [90, 180] of 200."""
    return milestones_within(epochs, [epochs * share for share in (0.45, 0.9)])


def _default_milestones_of(train: TrainParams) -> list[int]:
    return default_milestones(train.epochs)


# The keys each learning-rate schedule reads (engine/schedule.py), with the values they take when
# not set: the seed profile's multistep (milestones follow train.epochs: a callable default is
# computed from the section), onecycle as airbench94 (the defaults' schedule).
SCHEDULE_DEFAULTS: dict[str, dict[str, object]] = {
    "multistep": {"milestones": _default_milestones_of, "gamma": 0.1},
    "cosine": {},
    "onecycle": {"warmup_fraction": 0.23, "lr_start_factor": 0.2, "lr_end_factor": 0.07},
    "constant": {},
}
# The keys each optimizer reads besides lr, momentum, nesterov, weight_decay (engine/optim.py),
# with the values they take when not set (BENCHMARKS.md's muon runs).
OPTIMIZER_DEFAULTS: dict[str, dict[str, object]] = {
    "sgd": {},
    "muon": {"muon_lr": 0.24, "muon_momentum": 0.6},
}


def not_read_message(
    section: str, chooser: str, chosen: str, keys: list[str], table: dict[str, dict]
) -> str:
    """Why `keys` of `section` are refused: `section.chooser` `chosen` does not read them."""
    readers = "; ".join(
        f"{key}: only by {', '.join(name for name, read in table.items() if key in read)}"
        for key in keys
    )
    one = len(keys) == 1
    return (
        f"params: {', '.join(f'{section}.{key}' for key in keys)} {'is' if one else 'are'} not "
        f"read by {section}.{chooser} '{chosen}' ({readers}); remove {'it' if one else 'them'}: "
        "a key that does nothing would still retrain"
    )


def check_variant_keys(section: object, prefix: str, chooser: str, table: dict[str, dict]) -> None:
    """No key of a variant other than the chosen `chooser` value is set; every one is named at
    once, so switching a schedule is one edit."""
    chosen = getattr(section, chooser)
    reads = table.get(chosen, {})
    others = sorted({key for keys in table.values() for key in keys} - set(reads))
    ignored = [key for key in others if getattr(section, key) is not None]
    if ignored:
        raise PipelineError(not_read_message(prefix, chooser, chosen, ignored, table))


def equal_share_problem(batch_size: int, drop_last: bool, processes: int) -> str | None:
    """Why `processes` data-parallel ranks cannot split each batch equally, or None if they can."""
    if processes > 1 and not drop_last:
        return (
            f"train.drop_last must be true with {processes} processes, so that every rank gets an "
            "equal share of every batch (a last partial batch would not split evenly)"
        )
    if processes > 1 and batch_size % processes:
        return (
            f"train.batch_size: {batch_size} must be a multiple of the {processes} processes, so "
            "that every rank gets an equal share of every batch"
        )
    return None


@dataclass(frozen=True)
class TrainParams:
    """A training recipe, airbench94's scaled to 200 epochs by default; the chosen schedule's
    and optimizer's own keys take their defaults when left unset (None), and the others'
    stay None."""

    device: DeviceName = "auto"
    seed: int = 0
    epochs: int = 200
    max_steps: int = 0  # stop after this many optimizer steps (mid-epoch too); 0: all epochs
    batch_size: int = 512  # images per optimizer step
    drop_last: bool = True  # skip each epoch's last partial batch (one shape: no recompiles)
    # sgd: Nesterov SGD for every param; muon: Muon for conv filters, SGD for the rest
    optimizer: Literal["sgd", "muon"] = "sgd"
    lr: float = 0.75  # peak learning rate, for the mean loss over batch_size images
    momentum: float = 0.85
    nesterov: bool = True
    weight_decay: float = 0.00133  # coupled (PyTorch SGD): each step shrinks weights by lr × this
    # lr multiplier for BatchNorm and bias params; their decay per step stays
    bias_lr_scale: float = 64.0
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "onecycle"
    crop_padding: int = 2  # pixels of padding before the random 32×32 crop; 0 disables
    pad_mode: Literal["zeros", "reflect"] = "reflect"  # the seed used torchvision's zero fill
    # alternating: each image every other epoch
    flip: Literal["none", "random", "alternating"] = "alternating"
    cutout: int = 0  # side in pixels of a square zeroed at a random place; 0 disables
    # the run's first steps train on batches downscaled (antialiased bilinear) to this side in
    # pixels, the rest at 32: cheaper early steps; 0: every step at 32
    low_res_pixels: int = 0
    low_res_fraction: float = 0.0  # the share of the run's steps at low_res_pixels, from the first
    mixup_alpha: float = 0.0  # Beta(α, α) mixing of image pairs; 0 disables
    cutmix_alpha: float = 0.0  # Beta(α, α) box pasting between image pairs; 0 disables
    # torchvision's TrivialAugmentWide, AutoAugment (CIFAR-10 policy) or RandAugment, per group
    augment_policy: Literal["none", "trivial", "autoaugment", "randaugment"] = "trivial"
    label_smoothing: float = 0.2
    ema_decay: float = 0.999  # timm ModelEmaV3 of the weights, updated every step; 0 disables
    # airbench's Lookahead: every 5 steps the weights move toward their average
    lookahead: bool = False
    # autocast in autocast_dtype (BatchNorm params and stats stay fp32)
    mixed_precision: bool = True
    # the training set on the device: float32 normalised once, or uint8 (a quarter of the
    # memory) normalised batch by batch, to the same values
    images_on_device: Literal["float32", "uint8"] = "float32"
    # mixed_precision's dtype for every stage that runs the model; auto: bfloat16 on GPUs of
    # compute capability 8.0 and up, float16 below (a T4, a V100), float32 on the CPU; float16
    # adds a loss scaler (torch.amp.GradScaler) against underflow (engine/device.py)
    autocast_dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    deterministic: bool = False  # CUDA: deterministic algorithms only (slower); CPU always is
    nproc: int = 1  # processes (one per GPU) under torchrun; batch_size stays the global batch
    sync_batchnorm: bool = False  # nproc > 1 on CUDA: BatchNorm statistics over the global batch
    # torch.compile; auto: GPUs Triton supports (7.0+)
    compile: Literal["auto", "always", "never"] = "auto"
    checkpoint_every: int = 20  # epochs between checkpoints; the last epoch is always saved
    eval_batch_size: int = 1000
    # views for the per-epoch val accuracy
    eval_tta: Literal["none", "flip", "flip_translate"] = "none"
    milestones: list[int] | None = None  # multistep: epochs where the lr is multiplied by gamma
    gamma: float | None = None  # multistep: lr factor at each milestone
    warmup_fraction: float | None = None  # onecycle: share of the steps rising to the peak lr
    lr_start_factor: float | None = None  # onecycle: lr factor at the first step
    lr_end_factor: float | None = None  # onecycle: lr factor at the last step
    muon_lr: float | None = None  # muon: peak step of a conv filter (of norm sqrt(out channels))
    muon_momentum: float | None = None  # muon: the filters' own Nesterov momentum
    # nproc > 1: how long a rank waits in a collective (gradients, the state broadcast) before
    # the run stops: one hung or dead rank then holds the others this long, not torch's hour
    collective_timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        require_seed(self.seed, "train.seed")
        require_range(self.collective_timeout_minutes, "train.collective_timeout_minutes", 1, 1440)
        require_range(self.epochs, "train.epochs", 1, MAX_EPOCHS)
        require_range(self.max_steps, "train.max_steps", 0, MAX_STEPS)
        require_range(self.batch_size, "train.batch_size", 1, MAX_BATCH_SIZE)
        require(self.lr > 0, "train.lr", "positive", self.lr)
        require(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "train.weight_decay", "non-negative", self.weight_decay)
        require(self.bias_lr_scale > 0, "train.bias_lr_scale", "positive", self.bias_lr_scale)
        for chooser, table in (("schedule", SCHEDULE_DEFAULTS), ("optimizer", OPTIMIZER_DEFAULTS)):
            for key, default in table.get(getattr(self, chooser), {}).items():
                if getattr(self, key) is None:  # not set: the chosen variant's default
                    value = default(self) if callable(default) else copy.deepcopy(default)
                    object.__setattr__(self, key, value)
        if self.milestones is not None:
            require(
                all(1 <= m <= MAX_EPOCHS for m in self.milestones),
                "train.milestones", f"epochs in [1, {MAX_EPOCHS:,}]", self.milestones,
            )  # fmt: skip
        if self.gamma is not None:
            require(0 < self.gamma <= 1, "train.gamma", "in (0, 1]", self.gamma)
        if self.warmup_fraction is not None:
            require(
                0 <= self.warmup_fraction < 1,
                "train.warmup_fraction", "in [0, 1)", self.warmup_fraction,
            )  # fmt: skip
        for name in ("lr_start_factor", "lr_end_factor"):
            value = getattr(self, name)
            if value is not None:
                require(0 <= value <= 1, f"train.{name}", "in [0, 1]", value)
        require(0 <= self.crop_padding <= 16, "train.crop_padding", "in [0, 16]", self.crop_padding)
        require(0 <= self.cutout <= 32, "train.cutout", "in [0, 32]", self.cutout)
        require(
            self.low_res_pixels == 0 or MIN_LOW_RES_PIXELS <= self.low_res_pixels < 32,
            "train.low_res_pixels", f"0 or in [{MIN_LOW_RES_PIXELS}, 31]", self.low_res_pixels,
        )  # fmt: skip
        require(
            0 <= self.low_res_fraction < 1,
            "train.low_res_fraction", "in [0, 1)", self.low_res_fraction,
        )  # fmt: skip
        if (self.low_res_pixels == 0) != (self.low_res_fraction == 0):
            raise PipelineError(
                f"params: train.low_res_pixels {self.low_res_pixels} with train.low_res_fraction "
                f"{self.low_res_fraction} trains every step at 32 pixels (one of them would still "
                "retrain); set both, or both to 0"
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name}", "non-negative", value)
        require(
            0 <= self.label_smoothing < 1,
            "train.label_smoothing", "in [0, 1)", self.label_smoothing,
        )  # fmt: skip
        require(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1)", self.ema_decay)
        require_range(self.checkpoint_every, "train.checkpoint_every", 1, MAX_EPOCHS)
        require_range(self.eval_batch_size, "train.eval_batch_size", 1, MAX_BATCH_SIZE)
        require_range(self.nproc, "train.nproc", 1, MAX_PROCESSES)
        problem = equal_share_problem(self.batch_size, self.drop_last, self.nproc)
        if problem:
            raise PipelineError(f"params: {problem}")
        if self.muon_lr is not None:
            require(self.muon_lr > 0, "train.muon_lr", "positive", self.muon_lr)
        if self.muon_momentum is not None:
            require(
                0 <= self.muon_momentum < 1, "train.muon_momentum", "in [0, 1)", self.muon_momentum
            )
        check_variant_keys(self, "train", "schedule", SCHEDULE_DEFAULTS)
        check_variant_keys(self, "train", "optimizer", OPTIMIZER_DEFAULTS)
        if self.autocast_dtype == "float16" and not self.mixed_precision:
            raise PipelineError(
                "params: train.autocast_dtype float16 does nothing with train.mixed_precision "
                "false (it would still retrain); set mixed_precision true or the dtype auto"
            )
