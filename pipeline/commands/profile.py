"""`python -m pipeline profile NAME`: put a training profile's `model` and `train` sections into params.yaml.

Profiles are profiles/<name>.yaml (config/load.py reads and checks them): fast, default (what
params.yaml ships with, and where recipe keys a params file leaves out come from), seed, cpu;
the README says what each is for. The two sections are copied as text, comments included, and
the other sections of params.yaml stay as they are, so `dvc repro` runs the profile and
`git diff` and dvc.lock show exactly what changed.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config.load import (
    DEFAULT_PARAMS_PATH,
    PROFILE_SECTIONS,
    PROFILES_DIR,
    params_from_dict,
    parse_yaml,
    profile_path,
    profile_values,
    read_params_text,
)
from pipeline.errors import PipelineError
from pipeline.files import write_text_atomic

_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*):")


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
    profile_values(name, profiles_dir)  # refuse a broken profile before touching params.yaml
    profile = split_sections(profile_path(name, profiles_dir).read_text())
    current = split_sections(read_params_text(Path(params_path)))
    for section in PROFILE_SECTIONS:
        block = profile[section]
        current[section] = block if block.endswith("\n\n") else block.rstrip("\n") + "\n\n"
    text = "".join(current.values()).rstrip("\n") + "\n"
    try:
        params_from_dict(parse_yaml(text, str(params_path)))
    except PipelineError as error:
        raise PipelineError(f"{params_path}: with profile {name!r}: {error}") from None
    write_text_atomic(Path(params_path), text)
