"""Checkpoint files: `Checkpoint` says what one holds; written atomically, read only with
`torch.load(weights_only=True)`.

Train writes one per `train.checkpoint_every` epochs (raw and EMA weights); select writes
models/best.pt, the winner with the weights it chose as `model_state`, the TTA it chose and,
for a seed ensemble, its `members`; distill writes its students' checkpoints and
models/final.pt (with `distillation`); `ensemble add` writes models/ensemble/NAME.pt, another
run's best.pt with where it came from (`source`). On disk a checkpoint is a plain dict of data
and tensors (the keys below, `members` stored as `ensemble`), which `load_checkpoint` and
`save_checkpoint` read and write; `Checkpoint.load` / `.save` go through them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.config.load import model_from_config
from pipeline.engine.models import (
    Ensemble,
    build_model,
    check_ensemble_budget,
    count_trainable_params,
)
from pipeline.engine.tta import TTA_POLICIES
from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.models.registry import ModelConfig

REQUIRED_KEYS = ("model_state", "model_config", "epoch", "val_accuracy", "normalization")
MEMBER_KEYS = ("name", "source", "md5", "model_config", "model_state", "model_params")
MAX_ERROR_DETAIL = 200  # characters of torch's load error kept in the one-line message
WEIGHTS = ("raw", "ema")  # select's names for model_state's origin
RECORD_FIELDS = ("training", "distillation", "source")  # mappings the manifests and reports copy
MAX_RECORD_DEPTH = 4  # nesting of those mappings: ours go 2 deep
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # models/ensemble/NAME.pt's NAME
MD5 = re.compile(r"[0-9a-f]{32}")


def plain_data(value: object, depth: int = 0) -> bool:
    """JSON's kinds only (text, numbers, booleans, None, lists, mappings with text keys), at most
    MAX_RECORD_DEPTH deep: what select.json and the run manifest write as they are."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if depth >= MAX_RECORD_DEPTH:
        return False
    if isinstance(value, list):
        return all(plain_data(item, depth + 1) for item in value)
    return isinstance(value, dict) and all(
        isinstance(key, str) and plain_data(item, depth + 1) for key, item in value.items()
    )


def plain_mapping(value: object) -> bool:
    """A mapping of text keys to plain data (`training`, `distillation`, `source`)."""
    return isinstance(value, dict) and plain_data(value)


def is_count(value: object) -> bool:
    """A whole number ≥ 0 (not a bool): a count of epochs or parameters."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_record(record: dict[str, Any], where: object) -> None:
    """The fields that reach CSVs, plots, manifests and the console: of their kind, or one error.

    A checkpoint can come from anyone (`dvc pull` from a shared remote, `ensemble add` of a file
    sent by a friend): class names are CIFAR-10's, in order, as prepare demands of batches.meta
    (none, in checkpoints of before they were kept); a name like `</script>` would otherwise
    reach `dvc plots show`'s page. Values are not shown: they are what is wrong."""
    fix = "retrain, or pull the file again from where it came"

    def refuse(problem: str) -> typing.NoReturn:
        raise PipelineError(f"{where}: {problem}; {fix}")

    names = record.get("class_names", [])
    if names not in ([], CIFAR10_CLASS_NAMES):
        refuse(f"class_names are not CIFAR-10's {len(CIFAR10_CLASS_NAMES)} names in label order")
    if not is_count(record["epoch"]):
        refuse("epoch is not a whole number of epochs")
    for key in ("val_accuracy", "val_accuracy_ema"):
        value = record.get(key)
        if value is None and key == "val_accuracy_ema":
            continue
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            refuse(f"{key} is not a finite number")
    normalization = record["normalization"]
    if not (
        isinstance(normalization, dict)
        and all(
            isinstance(normalization.get(key), list)
            and len(normalization[key]) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in normalization[key])
            for key in ("mean", "std")
        )
    ):
        refuse("normalization is not {mean, std} of 3 finite numbers each")
    if record.get("weights") not in (None, *WEIGHTS):
        refuse(f"weights is not one of {list(WEIGHTS)}")
    if record.get("tta") not in (None, *TTA_POLICIES):
        refuse(f"tta is not one of {list(TTA_POLICIES)}")
    if not isinstance(record["model_config"], dict):
        refuse("model_config is not a mapping of the model's params")
    if record.get("model_params") is not None and not is_count(record["model_params"]):
        refuse("model_params is not a whole number")
    for key in RECORD_FIELDS:
        value = record.get(key)
        if value is not None and not plain_mapping(value):
            refuse(f"{key} is not a mapping of plain values (text, numbers, lists)")


def check_member(entry: object, number: int, where: object) -> None:
    """An ensemble member's entry in a best.pt: the same kinds as a checkpoint's own fields."""

    def refuse(problem: str) -> typing.NoReturn:
        raise PipelineError(
            f"{where}: ensemble member {number} {problem}; run select again, or pull the file "
            "again from where it came"
        )

    if not isinstance(entry, dict) or "model_config" not in entry or "model_state" not in entry:
        refuse("lacks model_config or model_state")
    if not isinstance(entry["model_config"], dict) or not isinstance(entry["model_state"], dict):
        refuse("has a model_config or model_state that is not a mapping")
    name = entry.get("name", str(number))
    if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
        refuse("has a name that is not a member's (letters, digits, . _ -, at most 100)")
    if entry.get("md5") is not None and not (
        isinstance(entry["md5"], str) and MD5.fullmatch(entry["md5"])
    ):
        refuse("has an md5 that is not 32 hex digits")
    if entry.get("model_params") is not None and not is_count(entry["model_params"]):
        refuse("has a model_params that is not a whole number")
    if entry.get("source") is not None and not plain_mapping(entry["source"]):
        refuse("has a source that is not a mapping of plain values")


@dataclass(frozen=True)
class Member:
    """Another run's selected model inside a seed-ensemble best.pt (its logits are averaged in)."""

    name: str  # the models/ensemble/NAME.pt it was
    source: dict | None  # where `ensemble add` took it from: a file and md5, or a revision
    md5: str | None  # of its models/ensemble file
    model_config: dict  # the model's config (pipeline/models/) as plain data
    model_state: dict[str, torch.Tensor]
    model_params: int | None  # trainable parameters

    def model(self, where: object) -> nn.Module:
        return build_from_config(f"{where} (ensemble member {self.name})", self.model_config,
                                 self.model_state)  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    model_state: dict[str, torch.Tensor]  # the raw weights; best.pt: the weights select chose
    model_config: dict  # the model's config as plain data, to rebuild the model by name
    epoch: int  # 1-based, after which it was written
    val_accuracy: float  # of the raw weights, under train.eval_tta, at that epoch
    normalization: dict[str, list[float]]  # {"mean", "std"} of the training set, 0–1 scale
    class_names: list[str] = dataclasses.field(default_factory=list)
    model_params: int | None = None  # trainable parameters
    # {"device", "deterministic", "precision", "compiled", "cpu_threads"}: is it bit-reproducible
    training: dict | None = None
    ema_state: dict[str, torch.Tensor] | None = None  # the EMA weights, when train kept one
    val_accuracy_ema: float | None = None
    weights: str | None = None  # select: which weights model_state holds (raw or ema)
    tta: str | None = None  # select: the TTA policy it chose for predict
    members: tuple[Member, ...] = ()  # select: the seed ensemble's other members
    source: dict | None = None  # ensemble add: where this member came from
    # distill: a student's round, teacher and settings, and that the custom-test images it
    # learnt from were unlabelled (their labels were the teacher's predictions)
    distillation: dict | None = None

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        return cls.from_dict(load_checkpoint(path), path)

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.to_dict())

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: object) -> Checkpoint:
        """The checkpoint a file's dict describes; a damaged member entry names the file."""
        check_record(record, where)
        members = []
        entries = record.get("ensemble") or []
        if not isinstance(entries, list):
            raise PipelineError(f"{where}: ensemble is not a list of members; run select again")
        for number, entry in enumerate(entries, start=1):
            check_member(entry, number, where)
            values = {key: entry.get(key) for key in MEMBER_KEYS}
            members.append(Member(**(values | {"name": entry.get("name", str(number))})))
        known = {item.name for item in dataclasses.fields(cls)} - {"members"}
        return cls(**{key: value for key, value in record.items() if key in known},
                   members=tuple(members))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The file's dict: select's and ensemble's keys only when set, so a training
        checkpoint holds exactly what train wrote."""
        record = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        members = record.pop("members")
        for key in ("weights", "tta", "source", "distillation"):
            if record[key] is None:
                del record[key]
        if members:
            record["ensemble"] = [dataclasses.asdict(member) for member in members]
        return record

    @property
    def model_name(self) -> str:
        """ "airnet", or for a seed ensemble "ensemble: airnet + airnet + airnet"."""
        names = [self.model_config.get("name", "?")] + [
            m.model_config.get("name", "?") for m in self.members
        ]
        return names[0] if not self.members else "ensemble: " + " + ".join(names)

    def model(self, where: object) -> nn.Module:
        """Rebuild the model by name (budget checked again) with `model_state`.

        With `members`, an `Ensemble` of it and them, the budget checked over all of them
        against its own `model.max_params`.
        """
        model = build_from_config(where, self.model_config, self.model_state)
        if not self.members:
            return model
        models = [model] + [member.model(where) for member in self.members]
        parts = [(self.model_config.get("name", "?"), count_trainable_params(model))] + [
            (member.name, count_trainable_params(built))
            for member, built in zip(self.members, models[1:], strict=True)
        ]
        check_ensemble_budget(
            parts, self.model_config.get("max_params", 0), f"{where} cannot be used"
        )
        return Ensemble(models)


def save_checkpoint(path: Path, record: dict[str, Any]) -> None:
    """Write `record` whole or not at all; the same content gives the same bytes.

    torch.save names the zip's top folder after the file it is given; saving through an open
    handle keeps that name fixed ("archive") instead of the random temporary name, so DVC's md5
    of a checkpoint depends on its content only.
    """
    try:
        with atomic_path(path) as temp_path, temp_path.open("wb") as handle:
            torch.save(record, handle)
    except OSError as error:  # a full disk, a lost mount: the earlier checkpoints stay as they were
        raise PipelineError(
            f"{path}: could not write the checkpoint ({error.strerror or error}); earlier "
            "checkpoints are intact"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's dict, read without unpickling arbitrary objects; its keys checked."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found; run the train stage first") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PipelineError(
            f"{path}: corrupt or unsafe checkpoint ({type(error).__name__}: {first_line})"
        ) from None
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED_KEYS):
        raise PipelineError(
            f"{path}: not a pipeline checkpoint (expected keys {list(REQUIRED_KEYS)})"
        )
    return record


def model_from_checkpoint(path: Path, record: dict[str, Any]) -> nn.Module:
    """The model a checkpoint file's dict describes (`Checkpoint.model`)."""
    return Checkpoint.from_dict(record, path).model(path)


def model_params_from_config(where: object, config: dict) -> ModelConfig:
    """A checkpoint's model_config, checked as params.yaml's model section is. Keys of another
    model are dropped (checkpoints from before each model had its own config carry them all),
    and keys its model gained later take their defaults, which mean "as before"."""
    try:
        return model_from_config(config)
    except PipelineError as error:
        detail = str(error).removeprefix("params: ")
        raise PipelineError(f"{where}: checkpoint's model_config is not valid ({detail})") from None


def build_from_config(where: object, config: dict, state: dict) -> nn.Module:
    params = model_params_from_config(where, config)
    try:
        model = build_model(params)
    except PipelineError as error:  # its own budget or an unknown name: the file's problem
        detail = str(error).removeprefix("params: ")
        raise PipelineError(f"{where}: checkpoint's model cannot be built ({detail})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        # torch's first line only says "Error(s) in loading state_dict": the next names the keys
        lines = [line.strip() for line in str(error).strip().splitlines()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        detail = detail if len(detail) <= MAX_ERROR_DETAIL else detail[:MAX_ERROR_DETAIL] + "…"
        raise PipelineError(
            f"{where}: weights do not fit model '{params.name}' ({detail})"
        ) from None
    return model
