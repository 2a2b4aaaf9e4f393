"""Training profiles: named `model` + `train` sections in profiles/<name>.yaml.

`python -m pipeline profile NAME` copies a profile's two sections into params.yaml (the other
sections and their comments stay as they are), so `dvc repro` runs it and `git diff` and
dvc.lock show exactly what changed. Profiles: fast, default (what params.yaml ships with),
seed, cpu; the README says what each is for.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.config import DEFAULT_PARAMS_PATH, Params, params_from_dict
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
PROFILE_SECTIONS = ("model", "train")
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*):")


def profile_names(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(path.stem for path in profiles_dir.glob("*.yaml"))


def _profile_path(name: str, profiles_dir: Path) -> Path:
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(
            f"{path}: no such profile; known profiles: {', '.join(profile_names(profiles_dir))}"
        )
    return path


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> Params:
    """The profile's sections, validated like params.yaml; every other section at its defaults."""
    path = _profile_path(name, profiles_dir)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict) or sorted(values) != sorted(PROFILE_SECTIONS):
        raise PipelineError(f"{path}: a profile holds exactly the sections {PROFILE_SECTIONS}")
    try:
        return params_from_dict(values)
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None


def split_sections(text: str) -> dict[str, str]:
    """Top-level sections of a YAML file as text, keyed by name ('' for what precedes the first).

    A section runs from its `name:` line to the next top-level key; comments and blank lines
    inside it stay with it.
    """
    sections: dict[str, str] = {"": ""}
    current = ""
    for line in text.splitlines(keepends=True):
        match = _TOP_LEVEL_KEY.match(line)
        if match:
            current = match.group(1)
            sections[current] = ""
        sections[current] += line
    return sections


def apply_profile(
    name: str, params_path: Path = DEFAULT_PARAMS_PATH, profiles_dir: Path = PROFILES_DIR
) -> None:
    """Replace params.yaml's model and train sections with the profile's, text and comments included."""
    load_profile(name, profiles_dir)  # refuse a broken profile before touching params.yaml
    profile = split_sections(_profile_path(name, profiles_dir).read_text())
    try:
        current = split_sections(Path(params_path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{params_path}: file not found (run from the project root)") from None
    for section in PROFILE_SECTIONS:
        block = profile[section]
        current[section] = block if block.endswith("\n\n") else block.rstrip("\n") + "\n\n"
    text = "".join(current.values()).rstrip("\n") + "\n"
    try:
        params_from_dict(yaml.safe_load(text))
    except PipelineError as error:
        raise PipelineError(f"{params_path}: with profile {name!r}: {error}") from None
    write_text_atomic(Path(params_path), text)
