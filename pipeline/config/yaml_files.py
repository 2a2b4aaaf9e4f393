"""Reading params and profile files: text that must be UTF-8, and YAML with no key given twice.
Every problem is one `PipelineError` naming the file (or the override) it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing a key given twice in one mapping: PyYAML keeps the last value
    and DVC's reader another, so the stages and dvc.lock would disagree about the run."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, found {type(key).__name__}",
                    key_node.start_mark,
                )  # fmt: skip
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (again on line {line})", None
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str = "params") -> Any:
    """YAML as `yaml.safe_load` reads it, with a duplicate or non-scalar key an error; any
    problem is one `PipelineError` that starts with `where` (a file, an override)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        detail = str(error).replace("\n", " ")
        raise PipelineError(f"{where}: not valid YAML: {detail}") from None
    except RecursionError:  # PyYAML builds nested values recursively
        raise PipelineError(f"{where}: not valid YAML: nested too deeply") from None


def read_params_text(path: Path) -> str:
    """A params or profile file's text; a missing, unreadable or non-UTF-8 file is one line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the project root)") from None
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:  # a folder, no read permission, an I/O error
        raise PipelineError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_yaml(path: Path) -> Any:
    return parse_yaml(read_params_text(path), str(path))
