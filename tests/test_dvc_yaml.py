"""dvc.yaml stays honest: each stage depends on every module it runs and declares the params it reads."""

from __future__ import annotations

import ast

import pytest
import yaml
from conftest import REPO_ROOT

from pipeline.__main__ import STAGE_PARAMS, STAGES


def _pipeline_imports(module: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / "pipeline" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline.")
        ):
            found.add(node.module.split(".")[1])
    return found


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_pipeline_imports(current))
    return seen


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lists_every_module_it_runs(stages: dict, stage: str) -> None:
    # Everything the stage's module imports, directly or not, and the dispatcher that runs it
    # (it decides which params reach the stage).
    needed = {f"pipeline/{module}.py" for module in _closure(stage)} | {"pipeline/__main__.py"}
    deps = {d for d in stages[stage]["deps"] if d.startswith("pipeline/")}
    assert needed - deps == set(), f"{stage} runs modules dvc.yaml does not list"
    assert deps - needed == set(), f"{stage} lists modules it does not run"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_exactly_the_params_it_reads(stages: dict, stage: str) -> None:
    assert stages[stage]["params"] == STAGE_PARAMS[stage]
    assert stages[stage]["cmd"] == f"python -m pipeline {stage}"
