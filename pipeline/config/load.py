"""Reading params: YAML (params.yaml, a profile, overrides) → `Params`, types and keys checked.

An unknown key (with the closest known one) or a value of the wrong type is a `PipelineError`
naming the key; ranges and the model-, schedule- and optimizer-specific keys are checked by the
dataclasses (params.py). The `model` and `train` keys a params file leaves out are taken from the
`default` profile (profiles/default.yaml, which params.yaml ships), and only those that the
file's model, schedule and optimizer read; a model, schedule or optimizer the default profile
does not use takes its own keys' defaults (params.py's MODEL_DEFAULTS, ...). So
`dvc exp run -S model.name=seed_resnet` works: the keys of the model it replaces, left in
params.yaml, are dropped with a warning that train prints. A profile must be complete and exact. `with_overrides` is the one way tests,
benchmarks and commands change some keys of a params mapping.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config.params import (
    MODEL_DEFAULTS,
    OPTIMIZER_DEFAULTS,
    SCHEDULE_DEFAULTS,
    ModelParams,
    Params,
    TrainParams,
    conditional_keys,
    with_later_model_keys,
)
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic

DEFAULT_PARAMS_PATH = Path("params.yaml")
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT_PROFILE = "default"  # what params.yaml ships, and where missing recipe keys come from
PROFILE_SECTIONS = ("model", "train")
# the recipe sections: each key that picks a variant, and the keys each variant reads with
# their defaults (a callable default is computed from the section's values)
Choosers = tuple[tuple[str, dict[str, dict[str, Any]]], ...]
RECIPES: dict[str, tuple[type, Choosers]] = {
    "model": (ModelParams, (("name", MODEL_DEFAULTS),)),
    "train": (TrainParams, (("schedule", SCHEDULE_DEFAULTS), ("optimizer", OPTIMIZER_DEFAULTS))),
}


class _MissingKey(PipelineError):
    """A recipe key set nowhere (a profile must set them all)."""


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(
    value: Any, annotation: Any, key: str, defaults: dict | None, notes: list[str] | None = None
) -> Any:
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
        if annotation is ModelParams:  # a distill.student written before a key was added
            value = with_later_model_keys(value)
        return _build(annotation, value, key + ".", defaults, notes)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise PipelineError(f"params: {key} must be one of {list(choices)}, found {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise PipelineError(f"params: {key} must be a list, found {_describe(value)}")
        return [
            _convert(item, item_type, f"{key}[{i}]", defaults, notes)
            for i, item in enumerate(value)
        ]
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
    raise TypeError(f"unsupported annotation for {key}: {annotation}")


def _with_recipe_defaults(
    section: str, values: dict, defaults: dict | None, notes: list[str] | None
) -> dict:
    """A recipe section's `values` completed for its model, schedule and optimizer. With
    `defaults` (the default profile's sections: a params file, not a profile) the keys a switch
    of variant left behind are dropped, and the new variant's missing keys take the default
    profile's values when it has that variant, else the variant's own defaults (params.py);
    `notes` gets a line for each. A key nothing gives stays missing, and `_build` names it."""
    cls, choosers = RECIPES[section]
    default_values = (defaults or {}).get(section, {})
    completed = dict(values)
    dropped, filled, kept = [], [], []
    variant_keys: dict[str, Any] = {}  # the chosen variants' keys: their defaults
    own_defaults: set[str] = set()  # ... of those, the ones the variant's table gives (noted)
    other_keys: set[str] = set()
    for chooser, table in choosers:
        chosen = completed.get(chooser, default_values.get(chooser))
        reads = table.get(chosen, {})
        others = conditional_keys(table) - set(reads)
        stale = sorted(key for key in others if completed.get(key) is not None)
        if defaults is not None and notes is not None and stale:  # a switch left them, or a slip
            readers = {
                key: " and ".join(name for name, keys in table.items() if key in keys)
                for key in stale
            }
            # keys both read, set in params.yaml: maybe the old choice's values (airnet's widths
            # for resnet_wide), kept, and named with the new choice's default
            kept += [
                f"{section}.{key} {completed[key]} is kept (the default for {chosen}: {reads[key]})"
                for key in reads
                if completed.get(key) is not None and not callable(reads[key])
                and completed[key] != reads[key]
                and any(key in keys and set(stale) & set(keys) for keys in table.values())
            ]  # fmt: skip
            dropped.append(
                ", ".join(f"{section}.{key} ({readers[key]}'s)" for key in stale)
                + f" {'is' if len(stale) == 1 else 'are'} not read by {section}.{chooser} "
                f"'{chosen}'"
            )
            for key in stale:
                completed.pop(key)
        if default_values.get(chooser) == chosen:  # the default profile's own variant
            variant_keys |= {key: default_values.get(key, reads[key]) for key in reads}
        else:
            variant_keys |= reads
            own_defaults |= set(reads)
        other_keys |= others
    for item in dataclasses.fields(cls):  # the keys every variant reads: the default profile's
        name = item.name
        own_key = name in other_keys or name in variant_keys
        if name not in completed and not own_key and name in default_values:
            completed[name] = copy.deepcopy(default_values[name])
    if defaults is not None:
        for key, default in variant_keys.items():
            if completed.get(key) is None:
                if callable(default):
                    default = default(completed)
                completed[key] = copy.deepcopy(default)
                if key in own_defaults:
                    filled.append(f"{section}.{key}={default}")
    if notes is not None and dropped:
        notes.append(
            f"warning: params: {'; '.join(dropped)}: ignored (left by a switch? delete them from "
            "params.yaml)" + "".join(f"; {line}" for line in kept)
        )
    if notes is not None and filled:
        notes.append(
            f"params: not in params.yaml, so the chosen variant's defaults: {', '.join(filled)}"
        )
    return completed


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


def _build(
    cls: type, values: dict[str, Any], prefix: str, defaults: dict | None,
    notes: list[str] | None = None,
) -> Any:  # fmt: skip
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise _unknown_key(prefix, key, known)
    section = prefix.rstrip(".")
    if cls is Params and defaults is not None:  # a missing recipe section: the default profile's
        values = {name: {} for name in RECIPES} | values
    kwargs, missing_key = {}, None
    for key, value in values.items():
        try:
            kwargs[key] = _convert(value, hints[key], prefix + key, defaults, notes)
        except _MissingKey as error:  # reported after every other section's own errors
            missing_key = missing_key or error
    if missing_key is not None:
        raise missing_key
    if section in RECIPES:
        kwargs = _with_recipe_defaults(section, kwargs, defaults, notes)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in kwargs]
        if missing:
            where = (
                "the profile" if defaults is None else f"params or the {DEFAULT_PROFILE} profile"
            )
            raise _MissingKey(f"params: {prefix}{missing[0]} is missing (set it in {where})")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in kwargs]
    if missing:  # a nested recipe section (distill.student) is written whole
        raise PipelineError(
            f"params: {prefix}{missing[0]} is missing (the section is written whole)"
        )
    try:
        return cls(**kwargs)
    except PipelineError as error:  # ModelParams names its keys model.*: a student's are its own
        if cls is ModelParams and prefix != "model.":
            raise PipelineError(str(error).replace("model.", prefix)) from None
        raise


def params_from_dict(values: dict[str, Any], notes: list[str] | None = None) -> Params:
    """`values` (params as plain data) checked and built; recipe keys left out are the default
    profile's or the chosen variant's. Keys of another model, schedule or optimizer are refused;
    with `notes` (params.yaml, which `dvc exp run -S model.name=X` leaves holding the old
    model's keys) they are dropped, and `notes` gets a line for them and for the defaults."""
    if not isinstance(values, dict):
        raise PipelineError(f"params: expected a mapping of sections, found {_describe(values)}")
    return _build(Params, values, "", default_profile_values(), notes)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing a key given twice in one mapping: PyYAML keeps the last value
    and DVC's reader another, so the stages and dvc.lock would disagree about the run."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, found {type(key).__name__}",
                    key_node.start_mark,
                )  # fmt: skip
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (again on line {line})", None
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str = "params") -> Any:
    """YAML as `yaml.safe_load` reads it, with a duplicate or non-scalar key an error; any
    problem is one `PipelineError` that starts with `where` (a file, an override)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        detail = str(error).replace("\n", " ")
        raise PipelineError(f"{where}: not valid YAML: {detail}") from None
    except RecursionError:  # PyYAML builds nested values recursively
        raise PipelineError(f"{where}: not valid YAML: nested too deeply") from None


def read_params_text(path: Path) -> str:
    """A params or profile file's text; a missing, unreadable or non-UTF-8 file is one line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the project root)") from None
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:  # a folder, no read permission, an I/O error
        raise PipelineError(f"{path}: cannot be read ({error.strerror or error})") from None


def _read_yaml(path: Path) -> Any:
    return parse_yaml(read_params_text(path), str(path))


def load_params(path: Path = DEFAULT_PARAMS_PATH, notes: list[str] | None = None) -> Params:
    """Read and validate `params.yaml`; a missing section takes its defaults, and keys a variant
    switch left are dropped, with a line in `notes` (the train stage prints them)."""
    notes = [] if notes is None else notes
    values = _read_yaml(path) or {}
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, found {_describe(values)}")
    try:
        return params_from_dict(values, notes)
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None


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
    """A profile's sections as plain data, checked: exactly model and train, each complete."""
    path = profile_path(name, profiles_dir)
    values = _read_yaml(path) or {}
    if not isinstance(values, dict) or sorted(values) != sorted(PROFILE_SECTIONS):
        raise PipelineError(f"{path}: a profile holds exactly the sections {PROFILE_SECTIONS}")
    try:
        _build(Params, values, "", defaults=None)  # complete: nothing filled in
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
    return values


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> Params:
    """The profile's sections, validated; every other section at its defaults."""
    return _build(Params, profile_values(name, profiles_dir), "", defaults=None)


@functools.cache
def _default_profile_values() -> dict[str, Any]:
    return profile_values(DEFAULT_PROFILE)


def default_profile_values() -> dict[str, Any]:
    """The default profile's sections (a copy): the defaults of every recipe key."""
    return copy.deepcopy(_default_profile_values())


def default_recipe() -> Params:
    return load_profile(DEFAULT_PROFILE)


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
        for chooser, table in RECIPES[section][1] if section in RECIPES else ():
            if chooser in section_overrides:
                reads = set(table.get(target[chooser], ()))
                for key in conditional_keys(table) - reads - set(section_overrides):
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
    values = with_overrides(_read_yaml(path) or {}, overrides)
    params = params_from_dict(values)
    write_text_atomic(Path(path), yaml.safe_dump(values, sort_keys=False))
    return params


def recipe(profile: str, overrides: dict[str, Any] | None = None) -> Params:
    """A profile with `overrides` on top: the recipe tests and benchmarks start from."""
    return params_from_dict(with_overrides(profile_values(profile), overrides or {}))
