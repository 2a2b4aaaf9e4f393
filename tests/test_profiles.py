"""Training profiles: what each holds, and `python -m pipeline profile NAME` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from pipeline.commands.profile import apply_profile, split_sections
from pipeline.config.load import load_params, load_profile, profile_names
from pipeline.errors import PipelineError


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=folder, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_the_four_profiles_exist_and_validate() -> None:
    assert profile_names() == ["cpu", "default", "fast", "seed"]
    for name in profile_names():
        load_profile(name)


def test_params_yaml_ships_the_default_profile_exactly() -> None:
    shipped = split_sections((REPO_ROOT / "params.yaml").read_text())
    default = split_sections((REPO_ROOT / "profiles/default.yaml").read_text())
    for section in ("model", "train"):
        assert shipped[section].strip() == default[section].strip()


def test_applying_a_profile_replaces_model_and_train_and_keeps_the_rest(tmp_path: Path) -> None:
    params_path = tmp_path / "params.yaml"
    original = (REPO_ROOT / "params.yaml").read_text()
    params_path.write_text(original)
    apply_profile("fast", params_path)
    text = params_path.read_text()
    before, after = split_sections(original), split_sections(text)
    for section in ("", "data", "prepare", "select", "predict"):
        assert after[section] == before[section], section  # comments included
    assert "# profile: fast" in after["model"]
    params = load_params(params_path)
    assert (params.model.name, params.train.epochs, params.train.batch_size) == ("airnet", 10, 1024)
    apply_profile("default", params_path)
    assert params_path.read_text() == original  # and back again, byte for byte


def test_unknown_profile_is_a_one_line_error_listing_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    result = _cli(tmp_path, "profile", "turbo")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "turbo.yaml: no such profile; known profiles: cpu, default, fast, seed" in lines[0]
    )
    assert (tmp_path / "params.yaml").read_text() == (REPO_ROOT / "params.yaml").read_text()


def test_a_path_is_not_a_profile_name(tmp_path: Path) -> None:
    """`profile` takes a name from profiles/, never a file elsewhere (../x or an absolute path)."""
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    outside = tmp_path / "evil.yaml"
    outside.write_text((REPO_ROOT / "profiles/seed.yaml").read_text())
    for name in (str(tmp_path / "evil"), f"../../../../../../../..{tmp_path}/evil"):
        result = _cli(tmp_path, "profile", name)
        assert result.returncode == 1 and "no such profile" in result.stderr, name
    assert (tmp_path / "params.yaml").read_text() == (REPO_ROOT / "params.yaml").read_text()


def test_profile_command_rewrites_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    result = _cli(tmp_path, "profile", "seed")
    assert result.returncode == 0, result.stderr
    assert "profile 'seed'" in result.stdout
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["name"] == "seed_resnet"
    assert _cli(tmp_path, "profile").returncode == 2  # usage error: the name is missing
    assert _cli(tmp_path, "train", "seed").returncode == 2  # a stage takes no name


def test_a_broken_profile_never_touches_params_yaml(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.yaml").write_text("model:\n  name: airnet\ntrain:\n  epochs: zero\n")
    params_path = tmp_path / "params.yaml"
    params_path.write_text("train:\n  epochs: 3\n")
    with pytest.raises(PipelineError, match="bad.yaml: params: train.epochs must be an integer"):
        apply_profile("bad", params_path, profiles)
    assert params_path.read_text() == "train:\n  epochs: 3\n"


@pytest.mark.parametrize("damage", ["not utf-8", "a folder"])
def test_profile_on_an_unreadable_params_file_is_one_line(tmp_path: Path, damage: str) -> None:
    params = tmp_path / "params.yaml"
    if damage == "not utf-8":
        params.write_bytes(b"train:\n  lr: 0.1  # \xff\n")
    else:
        params.mkdir()
    result = _cli(tmp_path, "profile", "cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "params.yaml: " in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_linked_params_yaml_stays_a_link_and_its_target_keeps_its_mode(tmp_path: Path) -> None:
    """`profile` on a symlinked params.yaml replaced the link with a 644 file."""
    target = tmp_path / "shared/params.yaml"
    target.parent.mkdir()
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    target.chmod(0o600)
    link = tmp_path / "params.yaml"
    link.symlink_to(target)
    apply_profile("fast", link)
    assert link.is_symlink() and load_params(link).train.epochs == 10
    assert (target.stat().st_mode & 0o777) == 0o600


def test_a_byte_order_mark_before_model_keeps_one_model_section(tmp_path: Path) -> None:
    """An editor's BOM in front of `model:` hid the section from the split: profile added a
    second `model:` and refused its own result."""
    params_path = tmp_path / "params.yaml"
    params_path.write_text("\ufeffmodel:\n  name: airnet\ntrain:\n  epochs: 3\n", encoding="utf-8")
    apply_profile("seed", params_path)
    text = params_path.read_text(encoding="utf-8")
    assert text.startswith("\ufeffmodel:") and text.count("\nmodel:") == 0
    assert load_params(params_path).model.name == "seed_resnet"
