"""A student's own model: one file in pipeline/models/, the README's own code, and nothing else edited."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from projects import copy_project, run_tool, sh
from torch import nn

from pipeline.config.load import params_from_dict
from pipeline.errors import PipelineError
from pipeline.models import registry
from pipeline.models.registry import ModelConfig, register_model


def readme_model_code() -> str:
    """The Python block of the README's "Your own model" section: the file a student saves."""
    section = (REPO_ROOT / "README.md").read_text().split("## Your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def scratch_registry() -> dict:
    """The registry as it is, restored after the test (which registers its own models)."""
    registry.registered_models()
    saved, conflicts = dict(registry._REGISTERED), dict(registry._CONFLICTS)
    yield registry._REGISTERED
    registry._REGISTERED.clear()
    registry._REGISTERED.update(saved)
    registry._CONFLICTS.clear()
    registry._CONFLICTS.update(conflicts)


def test_the_readme_model_registers_and_is_counted(scratch_registry: dict, tmp_path: Path) -> None:
    path = tmp_path / "my_resnet.py"
    path.write_text(readme_model_code())
    spec = importlib.util.spec_from_file_location("readme_my_resnet", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    params = params_from_dict({"model": {"name": "my_resnet", "width": 8, "blocks": 1}})
    assert params.model.name == "my_resnet" and params.model.width == 8
    assert registry.is_residual(params.model)
    from pipeline.engine.models import build_model, count_model_params

    model = build_model(params.model)
    assert count_model_params(params.model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(PipelineError, match="model 'my_resnet' has .* over the budget"):
        build_model(dataclasses.replace(params.model, width=512, max_params=1000))
    with pytest.raises(
        PipelineError, match=r"unknown key 'model.widht'; did you mean 'model.width'"
    ):
        params_from_dict({"model": {"name": "my_resnet", "widht": 8}})


def test_a_model_file_that_breaks_the_rules_is_named(scratch_registry: dict) -> None:
    """Each rule in one line naming the file, at registration: a draft that breaks one is then
    a file that failed to import, named only if its model is asked for."""

    def identity(config: object) -> nn.Module:
        return nn.Identity()

    @dataclass(frozen=True, kw_only=True)  # (without kw_only, Python itself refuses it)
    class NoDefault(ModelConfig):
        width: int  # no default: params.yaml could not leave it out

    @dataclass(frozen=True)
    class Kernel(ModelConfig):
        kernel: tuple[int, int] = (3, 3)  # params.yaml has no tuples

    @dataclass(frozen=True)
    class OddDefault(ModelConfig):
        width: int = 30

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.width % 4:
                raise ValueError(f"model.width must be a multiple of 4, found {self.width}")

    class NotADataclass(ModelConfig):
        pass

    for name, config, expected in (
        ("no_default", NoDefault, r"NoDefault.width needs a default"),
        ("kernel", Kernel, r"Kernel.kernel is a tuple\[int, int\]: params hold int, float"),
        ("odd", OddDefault, r"odd at its defaults fails: ValueError: model.width must be a multip"),
        ("plain", NotADataclass, r"NotADataclass must be a @dataclass\(frozen=True\)"),
    ):
        with pytest.raises(PipelineError, match=rf"test_own_model.py: {expected}"):
            register_model(name, config, residual=True)(identity)
    with pytest.raises(PipelineError, match=r"fine's residual must be true or false, found 'no'"):
        register_model("fine", ModelConfig, residual=lambda config: "no")(identity)
    assert not {"odd", "fine"} & set(registry.registered_models())

    @dataclass(frozen=True)
    class Checked(ModelConfig):
        depth: int = 2

        def __post_init__(self) -> None:
            super().__post_init__()
            assert self.depth <= 8, f"depth {self.depth} is over 8"

    register_model("checked", Checked, residual=False)(lambda config: "not a module")
    with pytest.raises(PipelineError, match=r"^params: model: AssertionError: depth 9 is over 8 "):
        params_from_dict({"model": {"name": "checked", "depth": 9}})
    from pipeline.engine.models import build_model

    with pytest.raises(PipelineError, match="model 'checked' was built as a str, not an nn.Module"):
        build_model(params_from_dict({"model": {"name": "checked"}}).model)
    # a second file registering a shipped name: neither is used, and both files are named
    register_model("seed_resnet", Checked, residual=False)(identity)
    with pytest.raises(PipelineError, match=r"'seed_resnet' is registered by more than one file "
                       r"\(.*seed_resnet.py, .*test_own_model.py\); rename"):  # fmt: skip
        params_from_dict({"model": {"name": "seed_resnet"}})


def test_a_student_section_without_a_name_is_the_model_sections_model() -> None:
    params = params_from_dict(
        {"model": {"name": "seed_resnet"}, "distill": {"student": {"dropout": 0.1}}}
    )
    assert params.distill.student.name == "seed_resnet" and params.distill.student.dropout == 0.1


def test_a_checkpoint_config_from_before_each_model_had_its_own_keys_loads() -> None:
    """The old flat model section: every model's keys, None where the model did not read them."""
    from pipeline.config.load import model_from_config

    old = {"name": "airnet", "max_params": 5_000_000, "base_width": None, "blocks": None,
           "dropout": None, "widths": [8, 16, 16], "residual": True, "whiten_bias_epochs": 0}  # fmt: skip
    config = model_from_config(old)
    assert (config.widths, config.residual_convs) == ([8, 16, 16], 1)  # added later: as before
    with pytest.raises(PipelineError, match="model.name must be one of"):
        model_from_config({"name": ["airnet"]})


def test_a_broken_draft_beside_the_model_in_use_is_named_only_when_needed(tmp_path: Path) -> None:
    """A student's half-written file must not stop a run of another model; asking for a model
    that is not found names the file that failed to import."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO_ROOT / "pipeline", project / "pipeline")
    (project / "pipeline/models/draft.py").write_text("def broken(:\n")
    (project / "pipeline/models/scratch.py").write_text("import sys\nsys.exit(2)\n")  # argparse
    (project / "pipeline/models/mine").mkdir()
    (project / "pipeline/models/mine/net.py").write_text("x = 1\n")
    (project / "pipeline/models/no_default.py").write_text(
        "from dataclasses import dataclass\n"
        "from pipeline.models.registry import ModelConfig\n"
        "@dataclass(frozen=True)\n"
        "class Config(ModelConfig):\n"
        "    width: int\n"
    )
    script = (
        "from pipeline.config.load import params_from_dict\n"
        "from pipeline.errors import PipelineError\n"
        "print(params_from_dict({}).model.name)\n"
        "try:\n"
        "    params_from_dict({'model': {'name': 'draft'}})\n"
        "except PipelineError as error:\n"
        "    print(error)\n"
    )
    result = run_tool(project, sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "airnet"
    assert "model.name must be one of ['airnet', 'resnet_wide', 'seed_resnet']" in lines[1]
    assert "pipeline/models/draft.py line 1: SyntaxError" in lines[1]
    assert "not searched: the subfolder mine/ (move its file up)" in lines[1]
    assert (
        "pipeline/models/no_default.py: TypeError: non-default argument 'width' follows default "
        "argument (every key of a model's config needs a default)" in lines[1]
    )


@pytest.mark.slow
def test_a_model_file_trains_through_dvc_repro_and_rewording_a_message_reruns_nothing(
    tiny_run: tuple[Path, str], tmp_path: Path
) -> None:
    project = copy_project(tiny_run[0], tmp_path / "project")
    # errors.py and reporting.py only word messages: rewording them reruns no stage
    for module in ("pipeline/errors.py", "pipeline/reporting.py"):
        path = project / module
        path.write_text(path.read_text() + "\n# reworded\n")
    # nor do an editor's and a system's litter beside the model files
    for litter in (
        ".DS_Store",
        "airnet.py~",
        ".airnet.py.swp",
        ".ipynb_checkpoints/a-checkpoint.py",
    ):
        (project / "pipeline/models" / litter).parent.mkdir(exist_ok=True)
        (project / "pipeline/models" / litter).write_text("x")
    status = sh(project, "dvc", "status", "--json")
    assert json.loads(status.stdout) == {}, status.stdout
    # the README's model, saved as the README says, and named in params.yaml: nothing else
    (project / "pipeline/models/my_resnet.py").write_text(readme_model_code())
    status = json.loads(sh(project, "dvc", "status", "--json").stdout)
    assert "train" in status  # the models folder is a dependency: a new file is a change
    params = yaml.safe_load((project / "params.yaml").read_text())  # not load_params: this
    # process's registry does not know my_resnet
    params["model"] = {"name": "my_resnet", "max_params": 5_000_000, "width": 8, "blocks": 1}
    params["train"]["epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(project, "dvc", "repro")
    output = result.stdout + result.stderr
    for stage in ("train", "select", "predict"):
        assert f"Running stage '{stage}'" in output, output
    assert "warning: params" not in output, output  # nothing left by another model
    manifest = json.loads((project / "submissions/latest.json").read_text())
    assert manifest["model"] == "my_resnet" and manifest["model_config"]["width"] == 8
    source = manifest["models"]["my_resnet"]
    assert source["file"] == "pipeline/models/my_resnet.py" and source["residual"] is True
    assert source["md5"] == hashlib.md5(readme_model_code().encode()).hexdigest()
    assert sh(project, "dvc", "status", "--json").stdout.strip() in ("{}", "")


def test_a_new_model_file_changes_the_code_a_run_is_keyed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume key and the run_id digest the stage's code: a folder dep's files count, a new
    one included, and a data folder's never."""
    from pipeline.integrations.repository import stage_code_md5s

    (tmp_path / "pipeline/models").mkdir(parents=True)
    (tmp_path / "pipeline/models/airnet.py").write_text("x = 1\n")
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/stray.py").write_text("")
    (tmp_path / "pipeline/models/.ipynb_checkpoints").mkdir()
    (tmp_path / "pipeline/models/.ipynb_checkpoints/airnet-checkpoint.py").write_text("x = 2\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    deps: [data/prepared, pipeline/models]\n"
    )
    monkeypatch.chdir(tmp_path)
    assert list(stage_code_md5s("train")) == ["pipeline/models/airnet.py"]
    (tmp_path / "pipeline/models/my_resnet.py").write_text("y = 2\n")
    assert list(stage_code_md5s("train")) == [
        "pipeline/models/airnet.py",
        "pipeline/models/my_resnet.py",
    ]
