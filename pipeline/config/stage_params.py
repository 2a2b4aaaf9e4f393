"""Which params each stage reads: the one table that dvc.yaml's `params:` lists, the dispatcher
(`python -m pipeline STAGE`) and tests/test_dvc_yaml.py all follow.

DVC reruns a stage when a param it declares changes, and only then; a param the code reads
but dvc.yaml does not declare breaks reproduction silently. So a stage is handed its params
through `StageParams`, which gives out only what the table declares for it. A key the table
declares by name must be written in params.yaml even where it has a default
(`require_declared_keys`): DVC stops a run without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.config.params import Params
from pipeline.errors import PipelineError

SECTIONS = tuple(field.name for field in dataclasses.fields(Params))
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    # every section: DVC runs it first whenever a param changes (stages/check.py)
    "check": SECTIONS,
    "fetch": ("data",),
    "prepare": ("prepare",),
    # a teacher that distill shrinks may be larger than model.max_params (teacher_max_params)
    "train": ("model", "train", "distill.teacher_max_params"),
    # the budget covers the whole seed ensemble; inference runs in training's precision
    "select": (
        "select",
        "model.max_params",
        "distill.teacher_max_params",
        "adapt",
        "train.autocast_dtype",
    ),
    "distill": ("distill", "adapt", "model", "train", "select"),
    "predict": SECTIONS,  # the run manifest records every param, so predict depends on them all
}
STAGES = tuple(STAGE_PARAMS)  # in the order dvc.yaml runs them


class StageParams:
    """`params` as one stage may read them: `get("select")`, `get("model.max_params")`."""

    def __init__(self, stage: str, params: Params) -> None:
        self.stage, self.params, self.declared = stage, params, STAGE_PARAMS[stage]

    def get(self, name: str) -> Any:
        if name not in self.declared:
            raise KeyError(
                f"stage {self.stage} reads params '{name}', which it does not declare "
                f"(config/stage_params.py and dvc.yaml: {', '.join(self.declared)})"
            )
        value: Any = self.params
        for part in name.split("."):
            value = getattr(value, part)
        return value

    def as_dict(self) -> dict[str, Any]:
        """Every declared section as plain data (predict's manifest records them)."""
        return {name: dataclasses.asdict(self.get(name)) for name in self.declared}


def require_declared_keys(path: Path, values: dict, params: Params) -> None:
    """A key dvc.yaml declares by name (`model.max_params` for select) must be written in the
    params file even where it has a default: DVC stops the run without it. A section left out
    whole is DVC's to name (its message is clear)."""
    for stage, names in STAGE_PARAMS.items():
        for name in names:
            section, _, key = name.partition(".")
            if key and isinstance(values.get(section), dict) and key not in values[section]:
                default = getattr(getattr(params, section), key)
                raise PipelineError(
                    f"{path}: {name} is missing: dvc.yaml's {stage} stage declares it, and DVC "
                    f"stops a run without it even though it has a default; write `{key}: "
                    f"{default}` under `{section}:`"
                )
