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


def with_train_values(block: str, values: dict[str, str], comment: str) -> str:
    """The train section's text with `values` (key → YAML flow value) in place of its own, each
    line keeping its indentation and getting `comment`; a block-style list under a key (`- 90`
    lines) goes with the value it had."""
    for key, value in values.items():
        pattern = re.compile(rf"^(\s+{key}:)[^\n]*\n(?:\s+-[^\n]*\n)*", re.MULTILINE)
        if not pattern.search(block):
            raise PipelineError(
                f"profile: train.{key} is not a line of the profile's train section; add it "
                "to profiles/<name>.yaml"
            )
        line = f" {value}  # {comment}\n"
        block = pattern.sub(lambda match, line=line: match.group(1) + line, block, count=1)
    return block


def apply_profile(
    name: str, params_path: Path = DEFAULT_PARAMS_PATH, profiles_dir: Path = PROFILES_DIR,
    train_values: dict[str, str] | None = None, comment: str = "",
) -> None:  # fmt: skip
    """Replace params.yaml's model and train sections with the profile's, text and comments
    included; `train_values` replace some of the train section's (profile --minutes)."""
    profile_values(name, profiles_dir)  # refuse a broken profile before touching params.yaml
    profile = split_sections(profile_path(name, profiles_dir).read_text())
    if train_values:
        profile["train"] = with_train_values(profile["train"], train_values, comment)
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


def fit_profile_to_minutes(
    name: str, minutes: float, params_path: Path = DEFAULT_PARAMS_PATH,
    profiles_dir: Path = PROFILES_DIR,
) -> str:  # fmt: skip
    """Put profile `name` into params.yaml with `train.epochs` (and multistep milestones) set so
    its training takes about `minutes` here, measured (engine/timing.py); what was done, in words."""
    import dataclasses

    from pipeline.config.load import load_params, load_profile
    from pipeline.config.params import with_teacher_budget
    from pipeline.engine import timing
    from pipeline.engine.device import resolve_device
    from pipeline.engine.loop import AUTO_CPU_LIMIT_MINUTES

    if not 1 <= minutes <= 10_000:
        raise PipelineError(f"profile: --minutes {minutes:g} must be in [1, 10,000]")
    recipe = load_profile(name, profiles_dir)
    params = load_params(params_path)
    device = resolve_device(recipe.train.device)
    train_images, val_images = timing.split_sizes(params.prepare)
    model = with_teacher_budget(recipe.model, params.distill.teacher_max_params)
    train = dataclasses.replace(recipe.train, device=device.type)
    estimate = timing.estimate_training(model, train, device, train_images, val_images)
    epochs = estimate.epochs_for(minutes * 60)
    fitted = timing.with_epochs(recipe.train, epochs)
    values = {"epochs": str(epochs)}
    if fitted.milestones is not None:
        values["milestones"] = "[" + ", ".join(map(str, fitted.milestones)) + "]"
    if recipe.train.max_steps:
        values["max_steps"] = "0"
    insisted = ""
    if recipe.train.device == "auto" and device.type == "cpu" and minutes > AUTO_CPU_LIMIT_MINUTES:
        values["device"] = "cpu"  # asked for: `auto` would stop a CPU run this long
        insisted = "; train.device: cpu, since auto stops CPU runs over 2 hours"
    comment = f"profile --minutes {minutes:g}: {estimate.epoch_seconds:.0f} s an epoch on {device.type} here"
    apply_profile(name, params_path, profiles_dir, values, comment)
    return (
        f"{params_path}: profile {name!r} with train.epochs {epochs} (profile: "
        f"{recipe.train.epochs}): about {estimate.epoch_seconds * epochs / 60:.1f} min of "
        f"training on this {device.type} ({estimate.seconds_per_step:.3f} s a step, "
        f"{estimate.steps_per_epoch} steps and {estimate.validation_seconds:.0f} s of "
        f"validation an epoch, measured){insisted}"
    )
