"""dvc.yaml stays honest: each stage depends on every module it runs and declares the params it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from pipeline.config.params import Params
from pipeline.config.stage_params import STAGE_PARAMS, STAGES, StageParams


def _module_file(dotted: str) -> Path | None:
    """pipeline.a.b → pipeline/a/b.py (or its package's __init__.py); None if neither exists."""
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _pipeline_imports(path: Path, top_level_only: bool = False) -> set[Path]:
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "pipeline"
        ):
            for alias in node.names:  # `from pipeline.records import manifest` imports a module
                found.add(_module_file(f"{node.module}.{alias.name}") or _module_file(node.module))
        elif isinstance(node, ast.Import):
            found |= {_module_file(a.name) for a in node.names if a.name.startswith("pipeline.")}
    return found


def _closure(path: Path, top_level_only: bool = False) -> set[str]:
    """Every pipeline file that running `path` imports, directly or not, as dvc.yaml names it
    (`top_level_only`: only what `path` imports when it loads, then all of those import).

    Packages' __init__.py files are left out: they hold a docstring only (checked below).
    """
    seen, todo = {path}, list(_pipeline_imports(path, top_level_only))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_pipeline_imports(current))
    return {p.relative_to(REPO_ROOT).as_posix() for p in seen if p.name != "__init__.py"}


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


# Modules that only word messages and draw progress: no stage depends on them, so rewording one
# reruns nothing. They import nothing of the pipeline, so they cannot compute anything for a stage.
MESSAGE_MODULES = {"pipeline/errors.py", "pipeline/reporting.py"}
# they build (or count) models from pipeline/models
MODEL_STAGES = ("check", "train", "select", "distill", "predict")


def _covered(module: str, deps: list[str]) -> bool:
    return any(module == dep or module.startswith(dep + "/") for dep in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lists_every_module_it_runs(stages: dict, stage: str) -> None:
    # Everything the stage's module imports, directly or not, and the dispatcher that runs it
    # (it decides which params reach the stage).
    # The dispatcher imports each stage (and each command) only when it runs it.
    dispatcher = _closure(REPO_ROOT / "pipeline/__main__.py", top_level_only=True)
    needed = (_closure(REPO_ROOT / f"pipeline/stages/{stage}.py") | dispatcher) - MESSAGE_MODULES
    deps = [d for d in stages[stage]["deps"] if d.startswith("pipeline/")]
    if stage in MODEL_STAGES:  # the registry imports every file there, a student's new one too
        assert "pipeline/models" in deps
    assert {module for module in needed if not _covered(module, deps)} == set(), (
        f"{stage} runs modules dvc.yaml does not list"
    )
    unused = [dep for dep in deps if not any(_covered(module, [dep]) for module in needed)]
    assert unused == [], f"{stage} lists modules it does not run"
    assert len(deps) == len(set(deps))


def test_message_modules_compute_nothing_for_a_stage() -> None:
    for module in MESSAGE_MODULES:
        assert _pipeline_imports(REPO_ROOT / module) == set(), module


def test_the_package_has_no_import_cycle() -> None:
    """Every import, a function's own too: a cycle means two modules that cannot be read apart."""
    graph = {
        path: {p for p in _pipeline_imports(path) if p is not None and p != path}
        for path in (REPO_ROOT / "pipeline").rglob("*.py")
    }
    visiting: list[Path] = []
    done: set[Path] = set()

    def visit(path: Path) -> None:
        if path in visiting:
            cycle = visiting[visiting.index(path) :] + [path]
            raise AssertionError(" → ".join(p.relative_to(REPO_ROOT).as_posix() for p in cycle))
        if path in done:
            return
        visiting.append(path)
        for imported in sorted(graph.get(path, ())):
            visit(imported)
        visiting.pop()
        done.add(path)

    for path in sorted(graph):
        visit(path)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_exactly_the_params_it_reads(stages: dict, stage: str) -> None:
    assert stages[stage]["params"] == list(STAGE_PARAMS[stage])
    assert stages[stage]["cmd"] == f"python -m pipeline {stage}"


def test_a_stage_cannot_read_a_param_it_does_not_declare() -> None:
    select_params = StageParams("select", Params())
    assert select_params.get("model.max_params") == 5_000_000
    with pytest.raises(KeyError, match="stage select reads params 'train.device'"):
        select_params.get("train.device")
    with pytest.raises(KeyError, match="'model'"):
        select_params.get("model")


def test_package_init_files_hold_only_a_docstring() -> None:
    # the import closure above leaves them out, so they must never run code of their own
    for init in sorted((REPO_ROOT / "pipeline").rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        assert all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
        ), f"{init} runs code"


def test_every_plot_has_a_title_in_words_and_one_metrics_file_is_the_headline() -> None:
    """`dvc plots show` titled two plots by their file path; `dvc metrics show` was 38 columns."""
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    titles = [next(iter(plot.values())).get("title") for plot in spec["plots"]]
    for stage in spec["stages"].values():
        titles += [next(iter(plot.values())).get("title") for plot in stage.get("plots", [])]
    assert len(titles) == 7 and all(t and "/" not in t and " " in t for t in titles), titles
    metrics = [next(iter(m)) for s in spec["stages"].values() for m in s.get("metrics", [])]
    assert metrics == ["metrics/predict.json"]
