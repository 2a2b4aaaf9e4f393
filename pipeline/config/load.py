"""Reading params: YAML (params.yaml, a profile, overrides) → `Params`, types and keys checked.

An unknown key (with the closest known one) or a value of the wrong type is a `PipelineError`
naming the key; ranges are checked by the dataclasses (params.py, and each model's config in
pipeline/models/). A key left out takes its default in code; the `model` section is the config
of the model `model.name` names. A key that the chosen model, schedule or optimizer does not
read is refused, except in params.yaml (`notes` given), where `dvc exp run -S model.name=X`
leaves the old model's keys: there they are dropped, and `notes` (which train prints) says so.
A profile holds what differs from the defaults. `with_overrides` is the one way tests,
benchmarks and commands change some keys of a params mapping.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pipeline.config.params import Params
from pipeline.config.stage_params import require_declared_keys
from pipeline.config.train_params import (
    OPTIMIZER_DEFAULTS,
    SCHEDULE_DEFAULTS,
    TrainParams,
    not_read_message,
)
from pipeline.config.yaml_files import dump_yaml, parse_yaml, read_yaml
from pipeline.errors import PipelineError
from pipeline.files import rewrite_user_file
from pipeline.models.registry import (
    DEFAULT_MODEL,
    PARAMS_TYPES,
    ModelConfig,
    model_entry,
    registered_models,
)

DEFAULT_PARAMS_PATH = Path("params.yaml")
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
PROFILE_SECTIONS = ("model", "train")
# A recipe section's variants: each key that picks one, and the keys each choice reads with
# their defaults (a callable default is computed from the section).
Variants = tuple[tuple[str, dict[str, dict[str, Any]]], ...]
TRAIN_VARIANTS: Variants = (("schedule", SCHEDULE_DEFAULTS), ("optimizer", OPTIMIZER_DEFAULTS))


def _variants(section: str) -> Variants:
    if section == "model" or section.endswith(".student"):  # a model: each registered one's keys
        return (("name", {n: m.own_defaults() for n, m in registered_models().items()}),)
    return TRAIN_VARIANTS if section == "train" else ()


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, annotation: Any, key: str, notes: list[str] | None = None) -> Any:
    """Check `value` against a field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # `X | None`: null is "not set"
        if value is None:
            return None
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise PipelineError(f"params: {key} must be a mapping, found {_describe(value)}")
        return _build(annotation, value, key + ".", notes)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise PipelineError(f"params: {key} must be one of {list(choices)}, found {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise PipelineError(f"params: {key} must be a list, found {_describe(value)}")
        return [_convert(item, item_type, f"{key}[{i}]", notes) for i, item in enumerate(value)]
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
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):  # YAML's .inf and .nan: a NaN loss from the first step
            raise PipelineError(f"params: {key} must be a finite number, found {value!r}")
        return number
    if annotation is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise PipelineError(f"params: {key} must be a string, found {_describe(value)}")
        return value
    raise PipelineError(
        f"params: {key} is declared as {annotation}, a type params cannot hold: {PARAMS_TYPES}"
    )


def _without_other_variants(
    prefix: str, values: dict, variants: Variants, chosen_by_default: dict[str, Any],
    notes: list[str] | None,
) -> tuple[dict, list[str]]:  # fmt: skip
    """`values` without the keys that their chosen model, schedule or optimizer does not read,
    and the chosen ones' keys that `values` leaves out, if a choice is not the default one (the
    defaults fill them; `notes` names them). Such a key that is set is refused, or, with
    `notes` (params.yaml, where a switch left it), dropped with a note."""
    completed = dict(values)
    dropped, kept, filled = [], [], []
    for chooser, table in variants:
        chosen = completed.get(chooser, chosen_by_default[chooser])
        reads = table.get(chosen) if isinstance(chosen, str) else None
        if reads is None:  # an unknown choice: the dataclass names it
            continue
        others = {key for keys in table.values() for key in keys} - set(reads)
        stale = sorted(key for key in others if completed.get(key) is not None)
        if stale and notes is None:
            raise PipelineError(not_read_message(prefix.rstrip("."), chooser, chosen, stale, table))
        if stale:
            readers = {
                key: " and ".join(n for n, keys in table.items() if key in keys) for key in stale
            }
            # keys both read, set in params.yaml: maybe the old choice's values (airnet's widths
            # for resnet_wide), kept, and named with the new choice's default
            kept += [
                f"{prefix}{key} {completed[key]} is kept (the default for {chosen}: {reads[key]})"
                for key in reads
                if completed.get(key) is not None and not callable(reads[key])
                and completed[key] != reads[key]
                and any(key in keys and set(stale) & set(keys) for keys in table.values())
            ]  # fmt: skip
            dropped.append(
                ", ".join(f"{prefix}{key} ({readers[key]}'s)" for key in stale)
                + f" {'is' if len(stale) == 1 else 'are'} not read by {prefix}{chooser} '{chosen}'"
            )
        for key in others:
            completed.pop(key, None)
        if chosen != chosen_by_default[chooser]:
            # a model's key may default to None (written `null`): unset only when left out
            filled += [
                key for key in reads
                if key not in completed or (completed[key] is None and chooser != "name")
            ]  # fmt: skip
    if notes is not None and dropped:
        notes.append(
            f"warning: params: {'; '.join(dropped)}: ignored (left by a switch? delete them from "
            "params.yaml)" + "".join(f"; {line}" for line in kept)
        )
    return completed, filled


def _unknown_key(prefix: str, key: object, known: set[str]) -> PipelineError:
    """The closest known key when there is one (`train.epoch` → `train.epochs`), else them all."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    if close:
        return PipelineError(
            f"params: unknown key '{prefix}{key}'; did you mean '{prefix}{close[0]}'?"
        )
    where = prefix.rstrip(".") or "top level"
    return PipelineError(
        f"params: unknown key '{prefix}{key}' (known under '{where}': {', '.join(sorted(known))})"
    )


def _build(cls: type, values: dict[str, Any], prefix: str, notes: list[str] | None = None) -> Any:
    section = prefix.rstrip(".")
    chosen_by_default: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(cls)}
    if cls is Params and isinstance((values.get("distill") or {}).get("student"), dict):
        model = values.get("model") if isinstance(values.get("model"), dict) else {}
        student = {"name": model.get("name", DEFAULT_MODEL)} | values["distill"]["student"]
        values = values | {"distill": values["distill"] | {"student": student}}
    if cls is ModelConfig:  # the config of the model `name` names
        chosen_by_default["name"] = DEFAULT_MODEL
        values = {"name": DEFAULT_MODEL} | values
        cls = model_entry(values["name"], f"{prefix}name").config
    variants = _variants(section) if cls is TrainParams or issubclass(cls, ModelConfig) else ()
    hints = typing.get_type_hints(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    known = own | {key for _, table in variants for keys in table.values() for key in keys}
    for key in values:
        if key not in known:
            raise _unknown_key(prefix, key, known)
    values, filled = _without_other_variants(prefix, values, variants, chosen_by_default, notes)
    kwargs = {
        key: _convert(value, hints[key], prefix + key, notes) for key, value in values.items()
    }
    try:
        built = cls(**kwargs)
    except PipelineError as error:  # a model's checks say model.*: a student's keys are its own
        if issubclass(cls, ModelConfig) and prefix != "model.":
            raise PipelineError(str(error).replace("model.", prefix)) from None
        raise
    except Exception as error:  # a model file's own check (ValueError, assert) or its bug
        if not issubclass(cls, ModelConfig):
            raise
        source = model_entry(kwargs["name"]).source
        text = (str(error).strip().splitlines() or [""])[0]  # one line
        detail = text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
        raise PipelineError(f"params: {section}: {detail} ({source})") from None
    if notes is not None and filled:
        notes.append(
            "params: not in params.yaml, so the chosen variant's defaults: "
            + ", ".join(f"{prefix}{key}={getattr(built, key)}" for key in filled)
        )
    return built


def params_from_dict(values: dict[str, Any], notes: list[str] | None = None) -> Params:
    """`values` (params as plain data) checked and built; keys left out take their defaults.
    Keys of another model, schedule or optimizer are refused; with `notes` (params.yaml, which
    `dvc exp run -S model.name=X` leaves holding the old model's keys) they are dropped, and
    `notes` gets a line for them and for the defaults taken."""
    if not isinstance(values, dict):
        raise PipelineError(f"params: expected a mapping of sections, found {_describe(values)}")
    return _build(Params, values, "", notes)


def model_from_config(config: dict[str, Any]) -> ModelConfig:
    """A model config saved as plain data (a checkpoint's), checked as params.yaml's `model`
    section is: keys of another model are dropped, keys left out take their defaults."""
    if not isinstance(config, dict):
        raise PipelineError(f"params: model must be a mapping, found {_describe(config)}")
    if "name" not in config:
        raise PipelineError("params: model.name is missing")
    fields = {f.name for f in dataclasses.fields(model_entry(config["name"]).config)}
    # checkpoints from before each model had its own config hold every model's keys, None if unread
    config = {key: value for key, value in config.items() if key in fields or value is not None}
    return _build(ModelConfig, config, "model.", notes=[])


def load_params(path: Path = DEFAULT_PARAMS_PATH, notes: list[str] | None = None) -> Params:
    """Read and validate `params.yaml`; a missing section takes its defaults, and keys a variant
    switch left are dropped, with a line in `notes` (the train stage prints them)."""
    notes = [] if notes is None else notes
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, found {_describe(values)}")
    try:
        params = params_from_dict(values, notes)
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
    if (Path(path).parent / "dvc.yaml").is_file():
        require_declared_keys(Path(path), values, params)
    return params


# --- profiles: named model + train sections ---------------------------------------------------


def profile_names(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(path.stem for path in profiles_dir.glob("*.yaml"))


def profile_path(name: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """profiles/NAME.yaml for a profile's name: a path (`../x`, `/tmp/x`) is not a name."""
    path = profiles_dir / f"{name}.yaml"
    if name not in profile_names(profiles_dir) or not path.is_file():
        raise PipelineError(
            f"{path}: no such profile; known profiles: {', '.join(profile_names(profiles_dir))}"
        )
    return path


def profile_values(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """A profile's sections as plain data, checked: model and train, each what differs from
    the defaults; a key its model or schedule does not read is refused."""
    path = profile_path(name, profiles_dir)
    values = read_yaml(path) or {}
    if not isinstance(values, dict) or not set(values) <= set(PROFILE_SECTIONS):
        raise PipelineError(f"{path}: a profile holds only the sections {PROFILE_SECTIONS}")
    values = {section: values.get(section) or {} for section in PROFILE_SECTIONS}
    try:
        _build(Params, values, "")
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
    return values


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> Params:
    """The profile's sections over the defaults, validated; every other section at its defaults."""
    return _build(Params, profile_values(name, profiles_dir), "")


# --- overrides --------------------------------------------------------------------------------


def with_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` (params as plain data) with `overrides` ({section: {key: value}}, nested like
    params.yaml) set on top; neither is changed.

    When an override switches a recipe's model, schedule or optimizer, the keys of `values` that
    the new one does not read are dropped with it (as `python -m pipeline profile` replaces a whole
    section); a key the override itself sets is always kept, so a wrong one is refused.
    """
    merged = copy.deepcopy(values)
    for section, section_overrides in overrides.items():
        if not isinstance(section_overrides, dict) or not isinstance(merged.get(section, {}), dict):
            merged[section] = copy.deepcopy(section_overrides)
            continue
        target = merged.setdefault(section, {})
        for key, value in section_overrides.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = with_overrides(target[key], value)
            else:
                target[key] = copy.deepcopy(value)
        for chooser, table in _variants(section):
            if chooser in section_overrides:
                reads = set(table.get(target[chooser], ()))
                for key in (
                    {k for keys in table.values() for k in keys} - reads - set(section_overrides)
                ):
                    target.pop(key, None)
    return merged


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["train.lr=0.1", "model.widths=[8,16,16]"]` (YAML values) → {section: {key: value}}."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        parts = key.split(".")
        if not equals or len(parts) < 2 or not all(parts):
            raise PipelineError(f"override '{assignment}': expected SECTION.KEY=VALUE")
        target = overrides
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = parse_yaml(value, f"override '{assignment}'")
    return overrides


def override_params_file(path: Path, overrides: dict[str, Any]) -> Params:
    """Set `overrides` in the params file at `path` (validated before it is written)."""
    values = with_overrides(read_yaml(path) or {}, overrides)
    params = params_from_dict(values)
    rewrite_user_file(Path(path), dump_yaml(values))
    return params


def recipe(profile: str, overrides: dict[str, Any] | None = None) -> Params:
    """A profile with `overrides` on top: the recipe tests and benchmarks start from."""
    return params_from_dict(with_overrides(profile_values(profile), overrides or {}))
