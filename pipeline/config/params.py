"""The params of each pipeline stage as frozen dataclasses, validated when built.

Sections are named after the stages that read them (DVC's convention). Every key has its default
here, and the `model` section's are the chosen model's (pipeline/models/, by `model.name`); a
profile (profiles/NAME.yaml) and params.yaml hold what differs. A value of the wrong range is a
`PipelineError` naming the key (load.py checks the types and unknown keys first).

Some train keys are read by one schedule or optimizer only (`SCHEDULE_DEFAULTS`,
`OPTIMIZER_DEFAULTS`): the chosen one's take their defaults when not set, and another's are
refused. A key that does nothing would still change dvc.lock and the resume key, and so retrain
from scratch for nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal

from pipeline.config.checks import (
    MAX_EPOCHS,
    MAX_MODEL_PARAMS,
    require,
    require_range,
    require_seed,
)
from pipeline.errors import PipelineError
from pipeline.models.registry import ModelConfig, default_model_config, model_entry

COMPETITION_SLUG = "deep-learning-spring-2025-project-1"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# Test-time augmentation policies (engine/tta.py defines their views), cheapest first.
TtaPolicy = Literal["none", "flip", "flip_translate", "multicrop"]
DeviceName = Literal["auto", "cpu", "cuda"]  # auto: CUDA when present, else the CPU

MAX_STEPS = 10**9  # train.max_steps
MAX_BATCH_SIZE = 65_536  # images per batch; more than CIFAR-10's 60,000 images
MAX_IMAGES = 1_000_000  # synthetic or held-out image counts (3 GB of uint8 at 32×32×3)
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
class SyntheticParams:
    train_images: int = 2000  # written as 5 data_batch files, like the original
    val_images: int = 500  # written as test_batch
    custom_test_images: int = 500  # written as cifar_test_nolabel.pkl (2025 layout)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "custom_test_images"):
            require_range(getattr(self, name), f"data.synthetic.{name}", 10, MAX_IMAGES)
        require_seed(self.seed, "data.synthetic.seed")


@dataclass(frozen=True)
class DataParams:
    # auto: use data/raw if it already holds the files, else Kaggle if credentials exist.
    source: Literal["auto", "kaggle", "url", "local", "synthetic"] = "auto"
    competition: str = COMPETITION_SLUG
    path: str = ""  # local source: a folder, the competition's .zip, or a CIFAR-10 .tar.gz
    custom_test_path: str = ""  # url / CIFAR-10-only local sources: the custom test pickle
    cifar_url: str = CIFAR10_URL
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class PrepareParams:
    val: Literal["test_batch", "holdout"] = "test_batch"
    holdout_images: int = 5000  # only for val: holdout; stratified, taken from the training set
    seed: int = 0
    # val: holdout only: the official test_batch joins the training images (all labelled data)
    train_on_test_batch: bool = False

    def __post_init__(self) -> None:
        require_range(self.holdout_images, "prepare.holdout_images", 10, MAX_IMAGES)
        require_seed(self.seed, "prepare.seed")
        if self.train_on_test_batch and self.val == "test_batch":
            raise PipelineError(
                "params: prepare.train_on_test_batch needs prepare.val: holdout (test_batch "
                "cannot be both a training set and the validation set)"
            )


def with_teacher_budget(model: ModelConfig, teacher_max_params: int) -> ModelConfig:
    """The model train builds: a teacher that distill shrinks may be larger than
    model.max_params, up to distill.teacher_max_params."""
    return replace(model, max_params=max(model.max_params, teacher_max_params))


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


@dataclass(frozen=True)
class SelectParams:
    batch_size: int = 1000  # images per evaluation batch
    # every checkpoint × {raw, EMA} weights × each of these policies is a candidate
    tta_policies: list[TtaPolicy] = field(
        default_factory=lambda: ["none", "flip", "flip_translate"]
    )
    # models/ensemble/*.pt members: auto averages them with this run's winner when that scores
    # higher on validation; always does it regardless; never ignores them
    ensemble: Literal["auto", "always", "never"] = "auto"
    device: DeviceName = "auto"  # where the candidates are scored
    mixed_precision: bool = True  # autocast in train.autocast_dtype (auto: per GPU)
    # the share of images (the least confident under one view) a policy's views are given;
    # the others keep the plain view (engine/tta.py). 1: every image
    tta_fraction: float = 1.0

    def __post_init__(self) -> None:
        require_range(self.batch_size, "select.batch_size", 1, MAX_BATCH_SIZE)
        require(0 < self.tta_fraction <= 1, "select.tta_fraction", "in (0, 1]", self.tta_fraction)
        require(
            len(self.tta_policies) >= 1,
            "select.tta_policies", "a non-empty list", self.tta_policies,
        )  # fmt: skip


@dataclass(frozen=True)
class AdaptParams:
    """What predict may learn from the unlabelled custom-test images as a whole (engine/adapt.py)."""

    # false: nothing here, and no distillation: each image is labelled by a model of the
    # labelled images alone (for course rules that forbid using the test images)
    use_test_images: bool = True
    batchnorm: bool = True  # AdaBN: BatchNorm statistics re-estimated on the custom-test images
    balance: Literal["none", "prior"] = "prior"  # prior: label counts follow `prior`
    prior: list[float] = field(default_factory=list)  # class shares, CIFAR-10 order; []: uniform

    def __post_init__(self) -> None:
        if self.prior:
            require(
                len(self.prior) == 10 and all(share > 0 for share in self.prior),
                "adapt.prior", "[] (uniform) or ten positive class shares", self.prior,
            )  # fmt: skip

    @property
    def batchnorm_on(self) -> bool:
        return self.use_test_images and self.batchnorm

    @property
    def balance_on(self) -> str:
        return self.balance if self.use_test_images else "none"


@dataclass(frozen=True)
class DistillParams:
    """Students trained on the labelled images plus the custom-test images with the teacher's
    soft labels (stages/distill_round.py)."""

    # students in turn, each the next one's teacher; 0: predict uses select's winner
    rounds: int = 0
    temperature: float = 2.0  # of the teacher's and the student's softmax on custom-test images
    kd_weight: float = 1.0  # loss weight of a custom-test image relative to a labelled one
    confidence_threshold: float = 0.0  # custom-test images the teacher is less sure of are left out
    # the teacher (model, trained by train) may be larger than model.max_params up to this;
    # 0: model.max_params. Whether a larger teacher is allowed is the course's rule, not ours.
    teacher_max_params: int = 0
    # the student's model section (name, max_params, its keys); null: the `model` section's
    student: ModelConfig | None = None

    def __post_init__(self) -> None:
        require(0 <= self.rounds <= 10, "distill.rounds", "in [0, 10]", self.rounds)
        require(0 < self.temperature <= 100, "distill.temperature", "in (0, 100]", self.temperature)
        require(0 <= self.kd_weight <= 100, "distill.kd_weight", "in [0, 100]", self.kd_weight)
        require(
            0 <= self.confidence_threshold < 1,
            "distill.confidence_threshold", "in [0, 1)", self.confidence_threshold,
        )  # fmt: skip
        require_range(self.teacher_max_params, "distill.teacher_max_params", 0, MAX_MODEL_PARAMS)


@dataclass(frozen=True)
class PredictParams:
    tta: Literal["auto", TtaPolicy] = "auto"  # auto: select's choice; else one of TtaPolicy
    batch_size: int = 1000
    device: DeviceName = "auto"  # where the custom test set is labelled
    mixed_precision: bool = True  # autocast in train.autocast_dtype (auto: per GPU)
    tta_fraction: float = 1.0  # as select.tta_fraction, for the custom test set

    def __post_init__(self) -> None:
        require_range(self.batch_size, "predict.batch_size", 1, MAX_BATCH_SIZE)
        require(0 < self.tta_fraction <= 1, "predict.tta_fraction", "in (0, 1]", self.tta_fraction)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    model: ModelConfig = field(default_factory=default_model_config)  # pipeline/models/airnet.py
    train: TrainParams = field(default_factory=TrainParams)
    select: SelectParams = field(default_factory=SelectParams)
    adapt: AdaptParams = field(default_factory=AdaptParams)
    distill: DistillParams = field(default_factory=DistillParams)
    predict: PredictParams = field(default_factory=PredictParams)

    def __post_init__(self) -> None:
        teacher_budget = self.distill.teacher_max_params
        if teacher_budget > self.model.max_params and self.distill.rounds == 0:
            raise PipelineError(
                f"params: distill.teacher_max_params {teacher_budget:,} is over model.max_params "
                f"{self.model.max_params:,} with distill.rounds: 0, so the submitted model could "
                "be over the budget; distil it (rounds ≥ 1) or set it to 0"
            )
        student = self.distill.student
        if teacher_budget > self.model.max_params and student is None:
            raise PipelineError(
                f"params: distill.teacher_max_params {teacher_budget:,} is over model.max_params "
                f"{self.model.max_params:,} but distill.student is null, so the student would be "
                "the teacher's model under the smaller budget; set distill.student to a model "
                "within model.max_params"
            )
        distilling = self.distill.rounds > 0 and self.adapt.use_test_images
        if distilling and (self.train.mixup_alpha > 0 or self.train.cutmix_alpha > 0):
            raise PipelineError(
                "params: train.mixup_alpha and train.cutmix_alpha must be 0 with distillation "
                "(distill.rounds > 0): a labelled image mixed with a custom-test image has no "
                "single temperature and weight; set them to 0 or distill.rounds to 0"
            )
        if self.train.optimizer == "muon":
            for where, model in (("model", self.model), ("distill.student", student)):
                if model is not None and not model_entry(model.name).muon_compatible:
                    raise PipelineError(
                        f"params: train.optimizer muon fixes each conv filter's norm, which only "
                        f"a BatchNorm after the conv makes harmless; {where}.name "
                        f"'{model.name}' adds conv outputs unnormalised (its file says "
                        "muon_compatible=False): use train.optimizer sgd or another model"
                    )
        if student is not None and student.max_params > self.model.max_params:
            raise PipelineError(
                f"params: distill.student.max_params {student.max_params:,} is over "
                f"model.max_params {self.model.max_params:,} (the submitted model's budget)"
            )
        if teacher_budget > self.model.max_params and not self.adapt.use_test_images:
            raise PipelineError(
                "params: distill.teacher_max_params over model.max_params needs "
                "adapt.use_test_images: true (without it there is no distillation)"
            )
