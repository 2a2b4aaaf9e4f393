"""The README is a short guide and docs/ holds the rest: lengths, links, and a params reference
that cannot go stale (every key of the dataclasses, with params.yaml's defaults)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import typing

import yaml
from conftest import REPO_ROOT

from pipeline.config.params import Params

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
README_MAX_LINES = 200
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _keys(cls: type, prefix: str = "") -> set[str]:
    """Every params key, nested sections dotted (distill.student is one key: a whole section)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            keys |= _keys(annotation, f"{prefix}{item.name}.")
        else:
            keys.add(prefix + item.name)
    return keys


def _reference_rows() -> list[tuple[list[str], str]]:
    """(keys, default cell) of each row of docs/params.md's table."""
    rows = []
    for line in (REPO_ROOT / "docs/params.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        keys = []
        for name in re.findall(r"`([^`]+)`", cells[0]):
            brace = re.fullmatch(r"(.*)\{(.+)\}(.*)", name)
            parts = brace.group(2).split(",") if brace else [""]
            keys += [f"{brace.group(1)}{p}{brace.group(3)}" for p in parts] if brace else [name]
        rows.append((keys, cells[1]))
    return rows


def _default(key: str) -> object:
    """The code's default (the default profile's for model and train: what params.yaml ships)."""
    value: object = dataclasses.asdict(Params())
    for part in key.split("."):
        value = value[part]  # type: ignore[index]
    return value


def test_the_params_reference_lists_every_key_and_no_other() -> None:
    documented = [key for keys, _ in _reference_rows() for key in keys]
    assert len(documented) == len(set(documented)), "a key documented twice"
    assert set(documented) == _keys(Params)


def test_the_params_reference_defaults_are_the_codes() -> None:
    checked = 0
    for keys, cell in _reference_rows():
        if cell.startswith("(") or cell in ("official URL",):
            continue  # a variant's own default, described in words
        values = re.split(r" / |, (?![^\[]*\])", cell) if len(keys) > 1 else [cell]
        if len(values) == 1:
            values = values * len(keys)
        assert len(values) == len(keys), (keys, cell)
        for key, text in zip(keys, values, strict=True):
            expected = _default(key)
            found = yaml.safe_load(text.strip("`"))
            if isinstance(expected, str) and found is None:
                found = ""
            assert found == expected, (key, text, expected)
            checked += 1
    assert checked > 70


def test_the_readme_is_a_short_guide_and_its_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a dated aside in the README"
    for path in [README, *DOCS]:
        for target in LINK.findall(path.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_the_readme_gives_the_test_command_ci_runs() -> None:
    ci = (REPO_ROOT / ".ci/run").read_text().splitlines()[-1]
    command = ci.split("&& ", 1)[1]  # after `cd`: the install and the test command
    assert command.replace('"', "'") in README.read_text()


def test_what_the_readme_steps_write_is_ignored_by_git() -> None:
    """`dvc plots show` writes dvc_plots/, and the zip goes in data/input/: neither may make the
    tree dirty, or submit refuses after the README's own steps."""
    for path in ("dvc_plots/index.html", "data/input/deep-learning-spring-2025-project-1.zip"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert ignored.returncode == 0, path
    kept = subprocess.run(["git", "check-ignore", "-q", "data/input/README.md"], cwd=REPO_ROOT)
    assert kept.returncode == 1  # the folder's note is committed, so the folder exists
