"""models/ensemble/: other runs' selected models, which select may average with this run's.

Each NAME.pt is a `Checkpoint` (another run's best.pt, with its `source`), put there and
`dvc add`-ed by `python -m pipeline ensemble add`. Members must be single models trained on the
same prepared data as this run, and the whole ensemble must fit the parameter budget; both are
checked here, before select runs any inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.engine.models import check_ensemble_budget, count_trainable_params
from pipeline.errors import PipelineError
from pipeline.files import file_md5
from pipeline.records.checkpoint import MEMBER_NAME, Checkpoint, Member

SAME_DATA_KEYS = ("normalization", "class_names")  # what says two runs saw the same data


@dataclass(frozen=True)
class MemberFile:
    """One models/ensemble/*.pt: its checkpoint, the model it builds, and the file's md5."""

    path: Path
    checkpoint: Checkpoint
    model: nn.Module
    md5: str

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def params(self) -> int:
        return count_trainable_params(self.model)

    def member(self) -> Member:
        """As best.pt holds it when select keeps the ensemble."""
        return Member(name=self.name, source=self.checkpoint.source, md5=self.md5,
                      model_config=self.checkpoint.model_config,
                      model_state=self.checkpoint.model_state, model_params=self.params)  # fmt: skip


def read_member(path: Path) -> tuple[Checkpoint, nn.Module]:
    """A checkpoint that can be a member (a single model) and its model; else one-line error."""
    checkpoint = Checkpoint.load(path)
    if checkpoint.members:
        raise PipelineError(f"{path}: is itself an ensemble; members must be single models")
    return checkpoint, checkpoint.model(path)


def load_members(ensemble_dir: Path) -> list[MemberFile]:
    """The members in `ensemble_dir`, by file name; none if the folder is absent."""
    members = []
    for path in sorted(ensemble_dir.glob("*.pt")):
        if not MEMBER_NAME.fullmatch(path.stem):  # best.pt keeps it; predict reads it back
            raise PipelineError(
                f"{path}: not a member's name (letters, digits, . _ -, at most 100 characters); "
                "remove it and `python -m pipeline ensemble add` it with --name"
            )
        checkpoint, model = read_member(path)
        members.append(MemberFile(path, checkpoint, model, file_md5(path)))
    return members


def check_members(
    run: Checkpoint, run_path: Path, members: list[MemberFile], max_params: int
) -> None:
    """Refuse, before any inference, an ensemble over budget or trained on other data."""
    run_params = count_trainable_params(run.model(run_path))
    check_ensemble_budget(
        [(f"this run's {run.model_config['name']}", run_params)]
        + [(str(member.path), member.params) for member in members],
        max_params,
        "remove members (python -m pipeline ensemble remove NAME), use smaller models, or set "
        "select.ensemble: never",
    )
    for member in members:
        for key in SAME_DATA_KEYS:
            if getattr(member.checkpoint, key) != getattr(run, key):
                raise PipelineError(
                    f"{member.path}: trained on other data than this run (its {key} differs); "
                    "members must be trained on the same prepared data"
                )
