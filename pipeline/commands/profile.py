"""`python -m pipeline profile NAME`: put a training profile's `model` and `train` sections into params.yaml.

Profiles are profiles/<name>.yaml (config/load.py reads and checks them): default (the defaults
in code, written out with a comment for each key: what params.yaml ships), and fast, seed, cpu,
each holding what differs from them; the README says what each is for. params.yaml gets every
key of the recipe, so that `dvc exp run -S train.KEY=VALUE` finds each one (DVC refuses to add a
key with `-S`): the default profile's line for a key (its comment included) where the value is
the same, the profile's own line where it sets one, else `key: value`. The other sections of
params.yaml stay as they are, so `dvc repro` runs the profile and `git diff` and dvc.lock show
exactly what changed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pipeline.config.load import (
    DEFAULT_PARAMS_PATH,
    PROFILE_SECTIONS,
    PROFILES_DIR,
    load_profile,
    params_from_dict,
    profile_path,
)
from pipeline.config.yaml_files import flow_yaml, parse_yaml, read_params_text
from pipeline.errors import PipelineError
from pipeline.files import rewrite_user_file

_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*):")


def split_sections(text: str) -> dict[str, str]:
    """Top-level sections of a YAML file as text, keyed by name ('' for what precedes the first).

    A section runs from its `name:` line to the next top-level key; comments and blank lines
    inside it stay with it. A byte-order mark (an editor's) stays in front, with the preamble:
    before `model:` it hid the section, and profile added a second one.
    """
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    sections: dict[str, str] = {"": bom}
    current = ""
    for line in text[len(bom) :].splitlines(keepends=True):
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


_KEY_LINE = re.compile(r"^  (\w+):")
TEMPLATE_PROFILE = (
    "default"  # its lines (and comments) are the template params.yaml is written from
)


def _key_lines(block: str) -> dict[str, str]:
    """A section's text, key → its line (comment included)."""
    return {
        m.group(1): line for line in block.splitlines(keepends=True) if (m := _KEY_LINE.match(line))
    }


def _line_value(line: str) -> object:
    return (parse_yaml(line) or {}).popitem()[1] if ":" in line else None


def section_text(name: str, section: str, values: dict, profiles_dir: Path = PROFILES_DIR) -> str:
    """params.yaml's `section` for profile `name`: each of `values` (the recipe, every key) on
    the template's line when it holds that value, on the profile's own line when it sets it,
    else as `key: value`."""
    shipped = (profiles_dir / f"{TEMPLATE_PROFILE}.yaml").is_file()  # else the shipped template
    template_path = profile_path(TEMPLATE_PROFILE, profiles_dir if shipped else PROFILES_DIR)
    template = split_sections(read_params_text(template_path))[section]
    own = split_sections(read_params_text(profile_path(name, profiles_dir))).get(section, "")
    template_lines, own_lines = _key_lines(template), _key_lines(own)
    header = (
        (own or template)
        .splitlines()[0]
        .replace(f"profile: {TEMPLATE_PROFILE}", f"profile: {name}")
    )
    lines = [header + "\n"]
    for key in [
        *(k for k in template_lines if k in values),
        *(k for k in values if k not in template_lines),
    ]:
        for line in (own_lines.get(key), template_lines.get(key)):
            if line is not None and _line_value(line) == values[key]:
                lines.append(line)
                break
        else:
            lines.append(f"  {key}: {flow_yaml(values[key])}\n")
    return "".join(lines)


def apply_profile(
    name: str, params_path: Path = DEFAULT_PARAMS_PATH, profiles_dir: Path = PROFILES_DIR,
    train_values: dict[str, str] | None = None, comment: str = "",
) -> None:  # fmt: skip
    """Replace params.yaml's model and train sections with the profile's recipe, every key
    written out; `train_values` replace some of the train section's (profile --minutes)."""
    recipe = load_profile(name, profiles_dir)  # refuse a broken profile before touching params.yaml
    current = split_sections(read_params_text(Path(params_path)))
    for section in PROFILE_SECTIONS:
        values = dataclasses.asdict(getattr(recipe, section))
        if section == "train":  # the schedules and optimizers not chosen: their keys are unset
            values = {key: value for key, value in values.items() if value is not None}
        block = section_text(name, section, values, profiles_dir)
        if section == "train" and train_values:
            block = with_train_values(block, train_values, comment)
        current[section] = block + "\n"
    text = "".join(current.values()).rstrip("\n") + "\n"
    try:
        params_from_dict(parse_yaml(text, str(params_path)))
    except PipelineError as error:
        raise PipelineError(f"{params_path}: with profile {name!r}: {error}") from None
    rewrite_user_file(Path(params_path), text)


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
    from pipeline.engine.cpu_estimate import AUTO_CPU_LIMIT_MINUTES
    from pipeline.engine.device import resolve_device

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
