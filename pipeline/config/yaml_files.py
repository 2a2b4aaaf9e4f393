"""Reading and writing params and profile files: text that must be UTF-8, and YAML read as DVC
reads it (ruamel.yaml, YAML 1.2) with no key given twice. Every problem is one `PipelineError`
naming the file (or the override) it came from."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

from pipeline.errors import PipelineError

PLAIN_KEYS = (str, int, float, bool, type(None))


def _reader() -> YAML:
    """What DVC reads params.yaml and dvc.lock with, chosen as DVC chooses it (ruamel.yaml's C
    parser where ruamel.yaml.clib is installed: it reads a `%YAML 1.1` file otherwise)."""
    return YAML(typ="safe")


def _writer(flow: bool = False) -> YAML:
    handler = YAML(typ="safe", pure=True)  # one formatting everywhere
    handler.default_flow_style = flow
    handler.sort_base_mapping_type_on_output = False
    handler.width = 4096  # a long value stays on its line (profile edits lines)
    return handler


def parse_yaml(text: str, where: str = "params") -> Any:
    """YAML as DVC reads it (YAML 1.2: `010` is 10, `1e-3` a number, `yes` and `1:30` strings;
    PyYAML's 1.1 reads each otherwise, so the stages and dvc.lock would disagree), with a key
    given twice or a key that is not a plain value an error. Any problem is one `PipelineError`
    that starts with `where` (a file, an override)."""
    try:
        data = _reader().load(text)
    except DuplicateKeyError as error:
        found = re.search(r'duplicate key "(.*?)" with value', str(error.problem))
        key = found.group(1) if found else "a key"
        line = error.problem_mark.line + 1 if error.problem_mark else "?"
        raise PipelineError(
            f"{where}: not valid YAML: key {key!r} appears twice (again on line {line})"
        ) from None
    except YAMLError as error:
        detail = " ".join(str(error).split("To suppress")[0].split())
        raise PipelineError(f"{where}: not valid YAML: {detail}") from None
    except RecursionError:  # nested values are built recursively
        raise PipelineError(f"{where}: not valid YAML: nested too deeply") from None
    except Exception as error:  # noqa: BLE001 - a tag's value: `2025-02-30`, `!!int ""`
        raise PipelineError(
            f"{where}: not valid YAML: a value cannot be read ({type(error).__name__}: {error})"
        ) from None
    _require_plain_keys(data, where)
    return data


def _require_plain_keys(data: Any, where: str) -> None:
    """Every mapping key a plain value (ruamel reads `[1]: x` as a tuple key); each container
    walked once (anchors may share one)."""
    seen, todo = set(), [data]
    while todo:
        item = todo.pop()
        if id(item) in seen or not isinstance(item, (dict, list)):
            continue
        seen.add(id(item))
        for key in item if isinstance(item, dict) else ():
            if not isinstance(key, PLAIN_KEYS):
                found = "list" if isinstance(key, tuple) else type(key).__name__  # YAML's name
                raise PipelineError(
                    f"{where}: not valid YAML: a key must be a plain value, found {found}"
                )
        todo.extend(item.values() if isinstance(item, dict) else item)


def dump_yaml(data: Any) -> str:
    """`data` as block-style YAML that `parse_yaml` (and DVC) read back as the same values."""
    stream = io.StringIO()
    _writer().dump(data, stream)
    return stream.getvalue()


def flow_yaml(value: Any) -> str:
    """One value as a flow-style YAML scalar or list (`[128, 304, 304]`), for one line."""
    stream = io.StringIO()
    _writer(flow=True).dump(value, stream)
    return stream.getvalue().removesuffix("\n...\n").strip()


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
