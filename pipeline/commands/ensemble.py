"""`python -m pipeline ensemble add|list|remove`: other runs' models for a seed ensemble.

Members live in models/ensemble/NAME.pt, each tracked by DVC (`dvc add`: NAME.pt.dvc goes into
git, the file into DVC's cache and, with `dvc push` or `submit`, the remote), so a commit says
exactly which models a submission averaged and `dvc pull` brings them back. The select stage
depends on the folder: adding or removing a member reruns select and predict (stages/select.py and records/ensemble.py say
how members are checked, scored and kept).

- `add SOURCE [--name NAME]`: SOURCE is a checkpoint file (another clone's models/best.pt, a
  download) or a git revision or DVC experiment name, whose models/best.pt is read with
  `dvc get` (each run of a `dvc exp run --queue -S train.seed=1,2,3` sweep, say). The member
  keeps the weights that run's select chose, drops its EMA copy, and records where it came from
  (`source`: the file and its md5, or the revision and its commit).
- `list`: the members, their trainable parameters, and the ensemble's total (with this run's
  model) against `model.max_params`.
- `remove NAME`: `dvc remove` its .dvc file and delete the member.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from rich.table import Table

from pipeline.engine.models import build_model, count_trainable_params
from pipeline.errors import PipelineError
from pipeline.files import file_md5
from pipeline.integrations.repository import dvc, git, last_error_line
from pipeline.models.registry import ModelConfig
from pipeline.paths import BEST_PATH, ENSEMBLE_DIR
from pipeline.records.checkpoint import MEMBER_NAME, Checkpoint
from pipeline.records.ensemble import load_members
from pipeline.reporting import console, table_console


def resolve_revision(revision: str) -> str | None:
    """The commit of a git revision or of a DVC experiment's name (refs/exps/…/NAME); else None."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except PipelineError:
        pass
    refs = git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    for line in refs.splitlines():
        commit, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == revision:
            return commit
    return None


def member_names(ensemble_dir: Path = ENSEMBLE_DIR) -> list[str]:
    return sorted(path.stem for path in ensemble_dir.glob("*.pt"))


def check_name(name: str) -> str:
    if not MEMBER_NAME.fullmatch(name):
        raise PipelineError(
            f"ensemble: member name {name!r} must be letters, digits, '.', '_' or '-' (not "
            "first), at most 100 characters"
        )
    return name


def fetch_source(source: str, scratch: Path) -> tuple[Path, dict, str]:
    """SOURCE's best.pt on this machine (a file as it is, a revision's via `dvc get` into
    `scratch`), where it came from, and the member name it gets by default."""
    source_file = Path(source)
    if source_file.is_file():
        md5 = file_md5(source_file)
        return source_file, {"file": str(source_file.resolve()), "md5": md5}, f"run-{md5[:8]}"
    commit = resolve_revision(source)
    if commit is None:
        raise PipelineError(
            f"ensemble: {source!r} is neither a checkpoint file nor a git revision or "
            "DVC experiment name (dvc exp show lists them)"
        )
    checkpoint_path = scratch / "best.pt"
    fetched = dvc("get", ".", BEST_PATH.as_posix(), "--rev", commit, "-o", str(checkpoint_path))
    if fetched.returncode != 0:
        raise PipelineError(
            f"ensemble: could not read {BEST_PATH} at {source} ({last_error_line(fetched)})"
        )
    default_name = re.sub(r"[^A-Za-z0-9._-]", "-", source).lstrip("-._")[:100] or commit[:8]
    return checkpoint_path, {"revision": source, "commit": commit}, default_name


def add(
    source: str,
    name: str | None,
    ensemble_dir: Path = ENSEMBLE_DIR,
    run_model: ModelConfig | None = None,
) -> Path:
    """Copy SOURCE's selected model into the ensemble as NAME and `dvc add` it."""
    if name is not None:
        check_name(name)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_path, origin, default_name = fetch_source(source, Path(scratch))
        checkpoint = Checkpoint.load(checkpoint_path)
        if checkpoint.members:
            raise PipelineError(
                f"ensemble: {source}'s model is itself an ensemble; add its single-model runs instead"
            )
        model = checkpoint.model(checkpoint_path)  # its weights fit its model
    destination = ensemble_dir / f"{check_name(name or default_name)}.pt"
    if destination.exists() or Path(f"{destination}.dvc").exists():
        raise PipelineError(
            f"{destination}: already a member; remove it first or pick another --name"
        )
    # a member keeps the weights its run's select chose (and its TTA), not the EMA copy
    member = dataclasses.replace(checkpoint, ema_state=None, val_accuracy_ema=None, source=origin)
    ensemble_dir.mkdir(parents=True, exist_ok=True)
    member.save(destination)
    added = dvc("add", "--quiet", destination.as_posix())
    if added.returncode != 0:
        destination.unlink(missing_ok=True)
        raise PipelineError(f"{destination}: dvc add failed ({last_error_line(added)})")
    console.print(
        f"ensemble: added {destination} ({checkpoint.model_config['name']}, "
        f"{count_trainable_params(model):,} params, from {source}); commit {destination}.dvc "
        f"and {ensemble_dir}/.gitignore, then dvc repro"
    )
    show(ensemble_dir, run_model)
    return destination


def remove(name: str, ensemble_dir: Path = ENSEMBLE_DIR) -> None:
    if not MEMBER_NAME.fullmatch(name):  # never a path: "../best" would delete models/best.pt
        raise PipelineError(f"ensemble: {name!r} is not a member name (ensemble list shows them)")
    destination = ensemble_dir / f"{name}.pt"
    if not destination.exists() and not Path(f"{destination}.dvc").exists():
        listed = ", ".join(member_names(ensemble_dir)) or "none"
        raise PipelineError(f"ensemble: no member named {name!r} (members: {listed})")
    if Path(f"{destination}.dvc").exists():
        removed = dvc("remove", f"{destination}.dvc")
        if removed.returncode != 0:
            raise PipelineError(
                f"{destination}.dvc: dvc remove failed ({last_error_line(removed)})"
            )
    destination.unlink(missing_ok=True)
    console.print(f"ensemble: removed {destination}; commit the change, then dvc repro")


def show(ensemble_dir: Path = ENSEMBLE_DIR, run_model: ModelConfig | None = None) -> None:
    """The members table and the total with this run's model (params.yaml's) against its budget."""
    table = Table(title=f"ensemble members ({ensemble_dir})")
    for column in ("name", "model", "params", "epoch", "weights", "tta", "source"):
        table.add_column(column)
    members = load_members(ensemble_dir)
    for member in members:
        origin = member.checkpoint.source or {}
        where = origin.get("revision") or origin.get("file") or "—"
        table.add_row(member.name, member.checkpoint.model_config["name"], f"{member.params:,}",
                      str(member.checkpoint.epoch), member.checkpoint.weights or "raw",
                      member.checkpoint.tta or "none", where)  # fmt: skip
    total = sum(member.params for member in members)
    table_console().print(table)
    if run_model is not None:
        own = count_trainable_params(build_model(run_model))
        verdict = (
            "within the budget"
            if own + total <= run_model.max_params
            else "OVER the budget: select will refuse this ensemble"
        )
        table_console().print(
            f"with this run's {run_model.name} ({own:,}): {own + total:,} trainable params, "
            f"{verdict} (model.max_params {run_model.max_params:,})"
        )
