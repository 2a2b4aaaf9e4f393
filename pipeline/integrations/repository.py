"""git and DVC as submit, scores and reproduce use them: state checks, push, pull, worktrees.

Both run as subprocesses: git from PATH, DVC as `python -m dvc` with this interpreter (and its
folder first on PATH, so stages that DVC runs use the same environment).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.config.yaml_files import parse_yaml, read_yaml
from pipeline.errors import PipelineError
from pipeline.files import file_md5


def git(*args: str, cwd: Path = Path("."), strip: bool = True) -> str:
    """Run git; return its stdout (stripped). A failure raises `PipelineError` with git's words."""
    try:
        result = subprocess.run(  # UTF-8 whatever the locale: file names may be any text
            ["git", *args], cwd=cwd, capture_output=True, encoding="utf-8", errors="replace"
        )
    except OSError as error:
        raise PipelineError(f"git is not available ({error})") from None
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise PipelineError(f"git {' '.join(args)}: {reason[-1] if reason else 'failed'}")
    return result.stdout.strip() if strip else result.stdout


def in_experiment_copy() -> bool:
    """Whether this runs in the copy that `dvc exp run --temp` or `--queue` made (under
    .dvc/tmp/exps/): it holds the committed files and the experiment's params only."""
    return "/.dvc/tmp/exps/" in Path.cwd().as_posix() + "/"


def head_commit(cwd: Path = Path(".")) -> str | None:
    try:
        return git("rev-parse", "HEAD", cwd=cwd)
    except PipelineError:
        return None  # not a git repository, or no commit yet


def changed_files(cwd: Path = Path("."), excluding: tuple[str, ...] = ()) -> list[str]:
    """Files that differ from HEAD: changed (staged or not) and untracked-but-not-ignored ones
    (a new module the code imports counts), except under `excluding` paths."""
    pathspecs = [f":!{path}" for path in excluding]
    status = git(
        "status", "--porcelain=v1", "-z", "--untracked-files=normal", "--", ".", *pathspecs,
        cwd=cwd, strip=False,
    )  # fmt: skip
    entries = status.split("\0")
    changed, index = [], 0
    while index < len(entries):
        entry = entries[index]
        if entry:
            changed.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy is followed by its source path
                index += 1
        index += 1
    return changed


def dvc(
    *args: str, cwd: Path = Path("."), capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """`python -m dvc ARGS` in `cwd`; with `capture=False` its output goes to the terminal."""
    pipe = subprocess.PIPE if capture else None
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, encoding="utf-8",
        errors="replace", stdout=pipe, stderr=pipe,
    )  # fmt: skip


def last_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """DVC's last ERROR line when its output was captured; else where to look."""
    if result.stderr is None:
        return f"exit status {result.returncode}; dvc's own message is above"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    if errors:
        return errors[-1].strip()
    # no ERROR line (`--json` mode): the message's first lines, up to the file snippet DVC adds
    # (its lines start with a line number: "  5  …"), else only a number would be left
    message = []
    for line in lines:
        if re.match(r"\s*\d+(\s|$)", line):
            break
        message.append(line.strip())
    return " ".join(message) or f"exit status {result.returncode}"


def stale_stages(cwd: Path = Path(".")) -> list[str]:
    """Stages whose outputs do not match their inputs (`dvc status`); empty when up to date."""
    result = dvc("status", "--json", cwd=cwd)
    if result.returncode != 0:
        raise PipelineError(f"dvc status failed: {last_error_line(result)}")
    return sorted(json.loads(result.stdout or "{}"))


def dvc_cache_dir(cwd: Path = Path(".")) -> Path | None:
    """The folder of DVC's cache (`dvc cache dir`: .dvc/cache unless configured), or None."""
    result = dvc("cache", "dir", cwd=cwd)
    folder = result.stdout.strip() if result.returncode == 0 else ""
    return Path(cwd, folder) if folder else None


def default_remote(cwd: Path = Path("."), project_only: bool = True) -> str | None:
    """DVC's default remote, or None. `project_only`: only .dvc/config's (what a clone of the
    commit gets; one set in .dvc/config.local or the user's global config would not travel with
    it); else DVC's merged view, the one `dvc pull` uses."""
    result = dvc("remote", "default", *(["--project"] if project_only else []), cwd=cwd)
    name = result.stdout.strip() if result.returncode == 0 else ""
    return name or None


NO_REMOTE_HELP = (
    "add one once with `dvc remote add -d storage /path/to/dvc-storage` (a local folder, S3, "
    "GCS, SSH, ...; its credentials go in .dvc/config.local) and commit .dvc/config; give an "
    "ASCII path (DVC fails on others and leaves .dvc/config empty: `git checkout .dvc/config`)"
)


def stage_code_md5s(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, str]:
    """The md5 of each Python file among `stage`'s deps in dvc.yaml, those inside a folder it
    lists included (pipeline/models: a new model file too); {} without dvc.yaml."""
    if not dvc_yaml.exists():
        return {}
    data = read_yaml(dvc_yaml)
    stages = data.get("stages") if isinstance(data, dict) else None
    entry = stages.get(stage) if isinstance(stages, dict) else None
    deps = entry.get("deps", []) if isinstance(entry, dict) else None
    if not isinstance(deps, list) or not all(isinstance(dep, str) for dep in deps):
        raise PipelineError(
            f"{dvc_yaml}: no '{stage}' stage with a list of deps; restore it with "
            f"`git checkout {dvc_yaml}`"
        )
    code: set[Path] = set()
    for dep in map(Path, deps):
        if dep.suffix == ".py" and dep.is_file():
            code.add(dep)
        elif dep.is_dir() and dep.parts[0] == "pipeline":  # a code folder, never a data one
            # not an editor's hidden copy (.ipynb_checkpoints/): Python never imports those
            code |= {
                path
                for path in dep.rglob("*.py")
                if not path.name.startswith(".")
                and not any(part.startswith(".") for part in path.relative_to(dep).parts)
            }
    return {path.as_posix(): file_md5(path) for path in sorted(code)}


def lock_output_hashes(lock_text: str) -> dict[str, str]:
    """Every output path a dvc.lock records, with its md5."""
    lock = parse_yaml(lock_text, "dvc.lock")
    stages = lock.get("stages") if isinstance(lock, dict) else None
    return {  # a damaged entry is no output: the comparison then names it as different
        out["path"]: out.get("md5", "")
        for stage in (stages.values() if isinstance(stages, dict) else ())
        if isinstance(stage, dict) and isinstance(stage.get("outs"), list)
        for out in stage["outs"]
        if isinstance(out, dict) and isinstance(out.get("path"), str)
    }
