"""The model registry: every file in pipeline/models/ may add models to it, by name.

A model is a config dataclass (a subclass of `ModelConfig`, every field with a default) and
something that builds an `nn.Module` from it (the class itself, or a function), joined by
`register_model`:

    @dataclass(frozen=True)
    class MyResNetConfig(ModelConfig):
        width: int = 64  # channels of the first stage

    @register_model("my_resnet", MyResNetConfig, residual=True)
    class MyResNet(nn.Module):
        def __init__(self, config: MyResNetConfig) -> None: ...

Then `model.name: my_resnet` in params.yaml (with any of its keys under `model:`) trains it.
A key's type is one params can hold (int, float, bool, str, a Literal, a list of one of them,
or X | None); `__post_init__` may check values (raise ValueError). `register_model` checks the
config when the file is imported (every field a key with a default, the defaults passing the
config's own checks, `residual` a bool), so a file that breaks a rule fails to import.
The registry imports each file of the folder once, the first time a name is looked up; a file
that fails to import is named only if the model asked for is not found (a draft beside the
model in use does not stop a run).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config.checks import MAX_MODEL_PARAMS, require_range
from pipeline.errors import PipelineError

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "airnet"  # what params.yaml ships (the default profile)
COMPETITION_MAX_PARAMS = 5_000_000  # the assignment's cap on trainable parameters


@dataclass(frozen=True)
class ModelConfig:
    """What every model's config holds; a model's own keys are its subclass's fields.

    A key added to a model later must default to the value that means "as before": checkpoints
    saved without it are rebuilt with the default.
    """

    name: str = ""  # the name the model is registered under (model.name); set on load
    max_params: int = COMPETITION_MAX_PARAMS  # trainable parameters allowed (meta-device count)

    def __post_init__(self) -> None:
        require_range(self.max_params, "model.max_params", 1, MAX_MODEL_PARAMS)


BASE_KEYS = tuple(field.name for field in dataclasses.fields(ModelConfig))


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    config: type[ModelConfig]
    build: Callable[[Any], Any]  # config → nn.Module
    # a ResNet in the assignment's sense (identity shortcuts), or a function of the config that says
    residual: bool | Callable[[Any], bool]
    # Muon fixes each conv filter's norm, harmless only when a BatchNorm follows every conv
    muon_compatible: bool
    source: Path  # the file that registered it

    def own_defaults(self) -> dict[str, Any]:
        """The model's own keys (besides name and max_params) and their defaults, read from the
        fields (the config's own checks are not run: a draft's cannot stop another model)."""
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(self.config)
            if f.name not in BASE_KEYS
        }


_REGISTERED: dict[str, RegisteredModel] = {}
_CONFLICTS: dict[str, list[Path]] = {}  # a name two files register: refused when asked for
Builder = TypeVar("Builder", bound=Callable[..., Any])
PARAMS_TYPES = "int, float, bool, str, a Literal of them, a list of one of those, or X | None"


def _shown(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _params_type_problem(annotation: Any) -> str | None:
    """Why a field of this type cannot be a params key (load.py reads exactly these), or None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            return f"{_shown(annotation)} (only X | None unions)"
        return _params_type_problem(rest[0])
    if origin is typing.Literal:
        ok = all(isinstance(arg, (str, int, bool)) for arg in args)
        return None if ok else _shown(annotation)
    if origin is list and len(args) == 1 and typing.get_origin(args[0]) is not list:
        return _params_type_problem(args[0])
    return None if annotation in (int, float, bool, str) else _shown(annotation)


def _check_config(where: Path, name: str, config: Any, residual: Any) -> None:
    """What `register_model` refuses, each in one line naming the file and the fix."""
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise PipelineError(f"{where}: {name}'s config must be a subclass of ModelConfig")
    if not dataclasses.is_dataclass(config) or "__dataclass_fields__" not in vars(config):
        raise PipelineError(f"{where}: {config.__name__} must be a @dataclass(frozen=True)")
    try:
        hints = typing.get_type_hints(config)
    except Exception as error:  # noqa: BLE001 - a name the annotations use is not defined
        raise PipelineError(f"{where}: {config.__name__}'s annotations: {error}") from None
    if hints.get("name") is not str or hints.get("max_params") is not int:
        raise PipelineError(f"{where}: {config.__name__} redefines name or max_params (leave them)")
    for field in dataclasses.fields(config):
        problem = _params_type_problem(hints[field.name])
        no_default = field.default is dataclasses.MISSING
        if (
            problem
            or not field.init
            or (no_default and field.default_factory is dataclasses.MISSING)
        ):
            why = (
                f"is a {problem}: params hold {PARAMS_TYPES}" if problem
                else "has init=False: every field is a key params.yaml may set" if not field.init
                else "needs a default (a model's keys all have one, so params.yaml may leave "
                "any of them out)"
            )  # fmt: skip
            raise PipelineError(f"{where}: {config.__name__}.{field.name} {why}")
    try:
        defaults = config(name=name)
        declared = residual(defaults) if callable(residual) else residual
    except Exception as error:  # noqa: BLE001 - the file's own check or its bug: named here
        raise PipelineError(
            f"{where}: {name} at its defaults fails: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(declared, bool):
        raise PipelineError(f"{where}: {name}'s residual must be true or false, found {declared!r}")


def register_model(
    name: str, config: type[ModelConfig], *, residual: bool | Callable[[Any], bool],
    muon_compatible: bool = True,
) -> Callable[[Builder], Builder]:  # fmt: skip
    """Register the decorated class or function (config → nn.Module) as model `name`.
    `residual`: whether it has identity shortcuts, or a function of its config that says."""

    def register(build: Builder) -> Builder:
        module = importlib.import_module(build.__module__)  # the file that registers it
        where = Path(getattr(module, "__file__", None) or build.__module__)
        _check_config(where, name, config, residual)
        other = _REGISTERED.get(name)
        if other is not None and other.source != where:
            _CONFLICTS.setdefault(name, [other.source]).append(where)
        _REGISTERED[name] = RegisteredModel(name, config, build, residual, muon_compatible, where)
        return build

    return register


@functools.cache
def _import_failures() -> tuple[str, ...]:
    """Import every module of this folder once (each registers its models); the ones that
    failed, each as "FILE: what went wrong"."""
    failures = []
    for module in sorted(pkgutil.iter_modules([str(MODELS_DIR)]), key=lambda m: m.name):
        try:
            importlib.import_module(f"{__package__}.{module.name}")
        except PipelineError as error:
            failures.append(str(error))
        except (Exception, SystemExit) as error:  # a draft's: the file's, named when asked for
            line = f" line {error.lineno}" if isinstance(error, SyntaxError) else ""
            hint = " (every key of a model's config needs a default)" * (
                "non-default argument" in str(error)
            )
            where = f"{MODELS_DIR / module.name}.py{line}"
            failures.append(f"{where}: {type(error).__name__}: {error}{hint}")
    return tuple(failures)


def registered_models() -> dict[str, RegisteredModel]:
    """Every model the files of pipeline/models/ register, by name."""
    _import_failures()
    return dict(sorted(_REGISTERED.items()))


def model_entry(name: object, key: str = "model.name") -> RegisteredModel:
    """The model registered as `name`; else an error listing the known ones and any file of
    pipeline/models/ that could not be imported (where it may have been)."""
    models = registered_models()
    if isinstance(name, str) and name in _CONFLICTS:
        files = ", ".join(str(path) for path in _CONFLICTS[name])
        raise PipelineError(
            f"params: {key} '{name}' is registered by more than one file ({files}); "
            "rename the model in one of them"
        )
    if isinstance(name, str) and name in models:
        return models[name]
    failures = "".join(f"; not imported: {failure}" for failure in _import_failures())
    nested = sorted(
        path.parent.relative_to(MODELS_DIR).as_posix() for path in MODELS_DIR.glob("*/*.py")
        if path.parent.name != "__pycache__" and not path.parent.name.startswith(".")
    )  # fmt: skip
    if nested:  # only the folder's own files are models: a subfolder's are never imported
        failures += f"; not searched: the subfolder {nested[0]}/ (move its file up)"
    raise PipelineError(
        f"params: {key} must be one of {sorted(models)}, found {name!r} (a model is a file in "
        f"pipeline/models/ that calls register_model){failures}"
    )


def default_model_config() -> ModelConfig:
    return model_entry(DEFAULT_MODEL).config(name=DEFAULT_MODEL)


def is_residual(config: ModelConfig) -> bool:
    """Whether the model is a ResNet in the assignment's sense, as its file declares."""
    residual = model_entry(config.name).residual
    return bool(residual(config) if callable(residual) else residual)


def model_source(name: str) -> dict[str, str]:
    """The file that defines model `name` (relative to the project when inside it) and its md5:
    the run manifest records which code the submitted model was."""
    source = model_entry(name).source
    try:
        shown = source.relative_to(MODELS_DIR.parents[1]).as_posix()
    except ValueError:
        shown = str(source)
    return {"file": shown, "md5": hashlib.md5(source.read_bytes()).hexdigest()}
