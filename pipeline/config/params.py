"""The params of each pipeline stage as frozen dataclasses, validated when built.

Sections are named after the stages that read them (DVC's convention). Every key has its default
here (the `train` section's in train_params.py), and the `model` section's are the chosen
model's (pipeline/models/, by `model.name`); a profile (profiles/NAME.yaml) and params.yaml hold
what differs. A value of the wrong range is a `PipelineError` naming the key (load.py checks the
types and unknown keys first).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from pipeline.config.checks import (
    MAX_BATCH_SIZE,
    MAX_MODEL_PARAMS,
    require,
    require_range,
    require_seed,
)
from pipeline.config.train_params import DeviceName, TrainParams
from pipeline.errors import PipelineError
from pipeline.models.registry import ModelConfig, default_model_config, model_entry

COMPETITION_SLUG = "deep-learning-spring-2025-project-1"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# a Kaggle competition's slug, as in its URL (older ones have capitals: GiveMeSomeCredit)
COMPETITION_SLUG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MAX_SLUG_CHARACTERS = 100

MAX_IMAGES = 1_000_000  # synthetic or held-out image counts (3 GB of uint8 at 32×32×3)

# Test-time augmentation policies (engine/tta.py defines their views), cheapest first.
TtaPolicy = Literal["none", "flip", "flip_translate", "multicrop"]


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

    def __post_init__(self) -> None:
        require(
            len(self.competition) <= MAX_SLUG_CHARACTERS
            and COMPETITION_SLUG_PATTERN.fullmatch(self.competition) is not None,
            "data.competition",
            f"a Kaggle competition's slug, as in its URL (e.g. '{COMPETITION_SLUG}')",
            self.competition if len(self.competition) <= MAX_SLUG_CHARACTERS else "(too long)",
        )


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
                len(self.prior) == 10 and all(share > 0 for share in self.prior)
                and math.isfinite(sum(self.prior)),  # 1e308 each: the shares' sum overflowed
                "adapt.prior", "[] (uniform) or ten positive class shares with a finite sum",
                self.prior,
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


def student_model(distill: DistillParams, model_params: ModelConfig) -> ModelConfig:
    """The model distill trains: `distill.student` or the `model` section, within the submitted
    model's budget (`model.max_params`)."""
    student = distill.student or model_params
    return replace(student, max_params=min(student.max_params, model_params.max_params))


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
