"""Typed configuration: `params.yaml` → frozen dataclasses, validated on load.

Sections are named after the pipeline stages that read them (DVC's convention). An unknown key,
a value of the wrong type or an out-of-range value is a `PipelineError` naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import PipelineError

DEFAULT_PARAMS_PATH = Path("params.yaml")
COMPETITION_SLUG = "deep-learning-spring-2025-project-1"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# Test-time augmentation policies (pipeline/tta.py defines their views), cheapest first.
TtaPolicy = Literal["none", "flip", "flip_translate", "multicrop"]


def _require(condition: bool, key: str, expected: str, found: object) -> None:
    if not condition:
        raise PipelineError(f"params: {key} must be {expected}, found {found!r}")


@dataclass(frozen=True)
class SyntheticParams:
    train_images: int = 2000  # written as 5 data_batch files, like the original
    val_images: int = 500  # written as test_batch
    custom_test_images: int = 500  # written as cifar_test_nolabel.pkl (2025 layout)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "custom_test_images"):
            value = getattr(self, name)
            _require(value >= 10, f"data.synthetic.{name}", "at least 10", value)


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

    def __post_init__(self) -> None:
        _require(
            self.holdout_images >= 10, "prepare.holdout_images", "at least 10", self.holdout_images
        )


@dataclass(frozen=True)
class ModelParams:
    name: str = "seed_resnet"  # seed_resnet | airnet | resnet_wide (models.py describes each)
    max_params: int = 5_000_000  # the competition's cap on trainable parameters
    base_width: int = 32  # seed_resnet: channels of the first stage; the seed uses 32 → 64 → 128
    blocks: list[int] = field(
        default_factory=lambda: [4, 4, 3]
    )  # seed_resnet, resnet_wide: blocks per stage
    dropout: float = 0.17  # seed_resnet, resnet_wide: inside each residual block (seed's value)
    widths: list[int] = field(
        default_factory=lambda: [64, 256, 256]
    )  # airnet, resnet_wide: channels per stage
    residual: bool = False  # airnet: a third conv per group, added to the group's output

    def __post_init__(self) -> None:
        _require(self.max_params > 0, "model.max_params", "positive", self.max_params)
        _require(self.base_width >= 1, "model.base_width", "at least 1", self.base_width)
        _require(
            len(self.blocks) >= 1 and all(b >= 1 for b in self.blocks),
            "model.blocks",
            "a non-empty list of positive block counts",
            self.blocks,
        )
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)", self.dropout)
        _require(
            len(self.widths) == 3 and all(w >= 1 for w in self.widths),
            "model.widths",
            "three positive channel counts",
            self.widths,
        )
        if self.name == "resnet_wide":
            _require(
                len(self.blocks) == len(self.widths),
                "model.blocks",
                f"one block count per width ({len(self.widths)}) for resnet_wide",
                self.blocks,
            )


@dataclass(frozen=True)
class TrainParams:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    seed: int = 0
    epochs: int = 200
    max_steps: int = 0  # stop after this many optimizer steps (mid-epoch too); 0: all epochs
    batch_size: int = 128  # images per optimizer step
    drop_last: bool = False  # skip each epoch's last partial batch (one shape: no recompiles)
    lr: float = 0.09  # peak learning rate, for the mean loss over batch_size images
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4  # coupled (PyTorch SGD): each step shrinks weights by lr × this
    bias_lr_scale: float = (
        1.0  # lr multiplier for BatchNorm and bias params; their decay per step is unchanged
    )
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [90, 180])  # epochs, multistep only
    gamma: float = 0.1  # multistep: lr factor at each milestone
    warmup_fraction: float = 0.23  # onecycle: share of the steps spent rising to the peak lr
    lr_start_factor: float = 0.2  # onecycle: lr factor at the first step
    lr_end_factor: float = 0.07  # onecycle: lr factor at the last step
    crop_padding: int = 4  # pixels of padding before the random 32×32 crop; 0 disables
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # the seed used torchvision's zero fill
    flip: Literal["none", "random", "alternating"] = (
        "random"  # alternating: each image mirrored every other epoch
    )
    cutout: int = 0  # side in pixels of a square zeroed at a random place; 0 disables
    mixup_alpha: float = 0.0  # Beta(α, α) mixing of image pairs; 0 disables
    cutmix_alpha: float = 0.0  # Beta(α, α) box pasting between image pairs; 0 disables
    trivial_augment: bool = False  # torchvision's TrivialAugmentWide, per group of images
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # timm ModelEmaV3 of the weights, updated every step; 0 disables
    lookahead: bool = (
        False  # airbench's Lookahead: every 5 steps the weights move back toward their average
    )
    mixed_precision: bool = True  # bf16 autocast on CUDA (BatchNorm params and stats stay fp32)
    deterministic: bool = False  # CUDA: deterministic algorithms only (slower); CPU always is
    nproc: int = 1  # processes (one per GPU) under torchrun; batch_size stays the global batch
    sync_batchnorm: bool = False  # nproc > 1 on CUDA: BatchNorm statistics over the global batch
    compile: Literal["auto", "always", "never"] = "auto"  # torch.compile; auto: CUDA only
    checkpoint_every: int = 10  # epochs between checkpoints; the last epoch is always saved
    eval_batch_size: int = 1000
    eval_tta: Literal["none", "flip", "flip_translate"] = (
        "none"  # views for the per-epoch val accuracy
    )

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "at least 1", self.epochs)
        _require(self.max_steps >= 0, "train.max_steps", "0 or more", self.max_steps)
        _require(self.batch_size >= 1, "train.batch_size", "at least 1", self.batch_size)
        _require(self.lr > 0, "train.lr", "positive", self.lr)
        _require(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "train.weight_decay", "non-negative", self.weight_decay)
        _require(self.bias_lr_scale > 0, "train.bias_lr_scale", "positive", self.bias_lr_scale)
        _require(
            all(m >= 1 for m in self.milestones),
            "train.milestones",
            "positive epochs",
            self.milestones,
        )
        _require(0 < self.gamma <= 1, "train.gamma", "in (0, 1]", self.gamma)
        _require(
            0 <= self.warmup_fraction < 1,
            "train.warmup_fraction",
            "in [0, 1)",
            self.warmup_fraction,
        )
        for name in ("lr_start_factor", "lr_end_factor"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"train.{name}", "in [0, 1]", value)
        _require(
            0 <= self.crop_padding <= 16, "train.crop_padding", "in [0, 16]", self.crop_padding
        )
        _require(0 <= self.cutout <= 32, "train.cutout", "in [0, 32]", self.cutout)
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            _require(value >= 0, f"train.{name}", "non-negative", value)
        _require(
            0 <= self.label_smoothing < 1,
            "train.label_smoothing",
            "in [0, 1)",
            self.label_smoothing,
        )
        _require(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1)", self.ema_decay)
        _require(
            self.checkpoint_every >= 1,
            "train.checkpoint_every",
            "at least 1",
            self.checkpoint_every,
        )
        _require(
            self.eval_batch_size >= 1, "train.eval_batch_size", "at least 1", self.eval_batch_size
        )
        _require(self.nproc >= 1, "train.nproc", "at least 1", self.nproc)
        if self.nproc > 1:  # every rank gets an equal share of every batch
            _require(self.drop_last, "train.drop_last", "true when train.nproc > 1", self.drop_last)
            _require(
                self.batch_size % self.nproc == 0, "train.batch_size",
                f"a multiple of train.nproc ({self.nproc})", self.batch_size,
            )  # fmt: skip


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

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "select.batch_size", "at least 1", self.batch_size)
        _require(
            len(self.tta_policies) >= 1,
            "select.tta_policies",
            "a non-empty list",
            self.tta_policies,
        )


@dataclass(frozen=True)
class PredictParams:
    tta: Literal["auto", TtaPolicy] = "auto"  # auto: select's choice; else one of TtaPolicy
    batch_size: int = 1000

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "predict.batch_size", "at least 1", self.batch_size)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    select: SelectParams = field(default_factory=SelectParams)
    predict: PredictParams = field(default_factory=PredictParams)


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise PipelineError(f"params: {key} must be a mapping, found {_describe(value)}")
        return _build(annotation, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise PipelineError(f"params: {key} must be one of {list(choices)}, found {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise PipelineError(f"params: {key} must be a list, found {_describe(value)}")
        return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"params: {key} must be true or false, found {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"params: {key} must be an integer, found {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"params: {key} must be a number, found {_describe(value)}")
        return float(value)
    if annotation is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise PipelineError(f"params: {key} must be a string, found {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation for {key}: {annotation}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise PipelineError(
                f"params: unknown key '{prefix}{key}' (known under '{prefix.rstrip('.') or 'top level'}': "
                f"{', '.join(sorted(known))})"
            )
    kwargs = {key: _convert(value, hints[key], prefix + key) for key, value in values.items()}
    return cls(**kwargs)


def params_from_dict(values: dict[str, Any]) -> Params:
    return _build(Params, values, "")


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate `params.yaml`; a missing section takes its defaults."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the project root)") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        detail = str(error).replace("\n", " ")
        raise PipelineError(f"{path}: not valid YAML: {detail}") from None
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, found {_describe(values)}")
    try:
        return params_from_dict(values)
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
