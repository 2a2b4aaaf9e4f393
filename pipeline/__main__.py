"""`python -m pipeline COMMAND`: a pipeline stage, a profile switch, or a submission command.

Stages (fetch … predict) run with the params in params.yaml (`dvc repro` runs them in order);
`profile NAME` puts a training profile's sections into params.yaml; `submit`, `scores` and
`reproduce RUN` send latest.csv to Kaggle, list the scores, and bring a scored run back;
`experiments` ranks a sweep's runs and `ensemble` manages the models select may average.
Expected failures (`PipelineError`) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from pipeline.config.load import DEFAULT_PARAMS_PATH, load_params
from pipeline.config.params import Params, with_teacher_budget
from pipeline.config.stage_params import STAGE_PARAMS, STAGES, StageParams
from pipeline.errors import PipelineError, printable


def run_stage(stage: str, params: Params, params_path: Path = DEFAULT_PARAMS_PATH) -> None:
    """Run `stage` with the params config/stage_params.py declares for it (and only those)."""
    declared = StageParams(stage, params)
    # Each stage's module is imported only when it runs: fetch and prepare never load dvclive.
    if stage == "check":
        from pipeline.stages import check

        check.run(params, params_path)  # it declares every section
    elif stage == "fetch":
        from pipeline.stages import fetch

        fetch.run(declared.get("data"))
    elif stage == "prepare":
        from pipeline.stages import prepare

        prepare.run(declared.get("prepare"))
    elif stage == "train":
        from pipeline.stages import train

        model = with_teacher_budget(
            declared.get("model"), declared.get("distill.teacher_max_params")
        )
        train.run(model, declared.get("train"), params_path=params_path)
    elif stage == "select":
        from pipeline.stages import select

        teacher_budget = max(
            declared.get("model.max_params"), declared.get("distill.teacher_max_params")
        )
        select.run(
            declared.get("select"), teacher_budget, adapt=declared.get("adapt"),
            autocast_dtype=declared.get("train.autocast_dtype"),
        )  # fmt: skip
    elif stage == "distill":
        from pipeline.stages import distill

        distill.run(
            declared.get("distill"), declared.get("adapt"), declared.get("model"),
            declared.get("train"), declared.get("select"), params_path=params_path,
        )  # fmt: skip
    elif stage == "predict":
        from pipeline.stages import predict

        predict.run(
            declared.get("predict"),
            all_params=declared.as_dict(),
            adapt=declared.get("adapt"),
            autocast_dtype=declared.get("train").autocast_dtype,
        )


DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


@functools.cache
def _dvc_stages() -> dict:
    """dvc.yaml's stages, read once per command ({} when it cannot be read)."""
    from pipeline.config.yaml_files import read_yaml

    try:
        stages = read_yaml(DVC_YAML)["stages"]
    except (KeyError, TypeError, PipelineError):
        return {}
    return stages if isinstance(stages, dict) else {}


def stage_files(stage: str) -> tuple[list[str], list[str]]:
    """What a stage reads (its data deps: the code is left out) and writes, as dvc.yaml says."""
    entry = _dvc_stages().get(stage)
    if not isinstance(entry, dict):
        return ["(see dvc.yaml)"], ["(see dvc.yaml)"]

    def names(items: list) -> list[str]:
        return [next(iter(item)) if isinstance(item, dict) else item for item in items or []]

    reads = [path for path in names(entry.get("deps")) if not path.startswith("pipeline/")]
    writes = names(entry.get("outs")) + names(entry.get("metrics")) + names(entry.get("plots"))
    if not reads:  # fetch reads where data.source points; check, which stages will run
        reads = ["the files data.source names"] if stage == "fetch" else ["dvc.lock"]
    return reads, writes


def add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> argparse.ArgumentParser:
    """--params and --debug, accepted before or after the command.

    The commands' copies have no defaults (SUPPRESS), so they never reset a value given before
    the command.
    """
    parser.add_argument("--params", type=Path,
                        default=DEFAULT_PARAMS_PATH if defaults else argparse.SUPPRESS,
                        help="params file (default: params.yaml)")  # fmt: skip
    parser.add_argument("--debug", action="store_true",
                        default=False if defaults else argparse.SUPPRESS,
                        help="show the traceback of expected errors too")  # fmt: skip
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return add_common_options(commands.add_parser(name, help=help), defaults=False)

    for stage in STAGES:
        reads, writes = stage_files(stage)
        stage_parser = command(stage, help=f"run the {stage} stage (dvc repro runs them all)")
        stage_parser.description = (
            f"The {stage} stage, as `dvc repro` runs it. Reads {', '.join(reads)} and params "
            f"{', '.join(STAGE_PARAMS[stage])}; writes {', '.join(writes)}."
        )
    profile = command("profile", help="put a training profile into params.yaml")
    profile.add_argument("profile", help="fast, default, seed or cpu")
    profile.add_argument(
        "--minutes", type=float, metavar="M",
        help="set train.epochs so that training takes about M minutes on this machine (measured)",
    )  # fmt: skip
    doctor = command(
        "doctor", help="what a run will do on this machine: GPU, precision, data, training times"
    )
    doctor.add_argument(
        "--profiles", metavar="NAMES", help="comma-separated profiles to time (default: all)"
    )
    submit = command(
        "submit",
        help="submit submissions/latest.csv to data.competition; record it in history.csv",
    )
    submit.add_argument("-m", "--message", help="what this run tries (run_id and commit are added)")
    submit.add_argument(
        "--force", action="store_true",
        help="submit although the run learned nothing (chance-level), outputs are stale, the tree "
        "is dirty or the CSV was submitted before",
    )  # fmt: skip
    submit.add_argument(
        "--no-push", dest="push", action="store_false",
        help="skip `dvc push` (the run's outputs then cannot be pulled back from the remote)",
    )  # fmt: skip
    submit.add_argument(
        "--wait", action="store_true",
        help="poll Kaggle until it has scored the submission, then print the public score",
    )  # fmt: skip
    submit.add_argument("--wait-limit", type=float, metavar="SECONDS",
                        help="--wait gives up after this long (default 600)")  # fmt: skip
    submit.add_argument("--poll-interval", type=float, metavar="SECONDS",
                        help="--wait looks at the submission this often (default 10, at least 5)")  # fmt: skip
    submit.add_argument(
        "--daily-limit", type=int, metavar="N",
        help="refuse once N submissions were made today, UTC (default 10; set your competition's)",
    )  # fmt: skip
    command("scores", help="Kaggle's scores joined with history.csv and the manifests")
    plots = command(
        "plots", help="dvc plots show (or diff REV ...), once every plot file is checked"
    )
    plots.add_argument("revisions", nargs="*", metavar="REV",
                       help="git revisions to compare with the workspace (dvc plots diff)")  # fmt: skip
    experiments = command("experiments", help="DVC experiments ranked by validation accuracy")
    experiments.add_argument("--apply", action="store_true", help="dvc exp apply the best one")
    ensemble = command(
        "ensemble", help="other runs' models that select may average with this run's"
    )
    actions = ensemble.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = add_common_options(
        actions.add_parser(
            "add", help="copy a run's models/best.pt into models/ensemble and dvc add it"
        ),
        defaults=False,
    )
    add.add_argument("source", help="a checkpoint file, a git revision or a DVC experiment name")
    add.add_argument("--name", help="member name (default: the revision, or run-<md5 prefix>)")
    add_common_options(
        actions.add_parser("list", help="the members and the ensemble's params"), defaults=False
    )
    remove = add_common_options(
        actions.add_parser("remove", help="dvc remove a member"), defaults=False
    )
    remove.add_argument("name")
    reproduce = command(
        "reproduce",
        help="check a submitted run out in a git worktree, restore it, compare its CSV",
    )
    reproduce.add_argument("run", help="run_id, CSV md5 (or a prefix) or Kaggle submission ref")
    reproduce.add_argument(
        "--into", type=Path, help="worktree folder (default: ../<project>-runs/<run_id>)"
    )
    return parser


def run_command(args: argparse.Namespace) -> int:
    if args.command == "profile":
        from pipeline.commands.profile import apply_profile, fit_profile_to_minutes

        if args.minutes is not None:
            print(fit_profile_to_minutes(args.profile, args.minutes, args.params))
            return 0
        apply_profile(args.profile, args.params)
        print(f"{args.params}: model and train sections now hold profile {args.profile!r}")
    elif args.command == "doctor":
        from pipeline.commands import doctor

        names = [name.strip() for name in args.profiles.split(",")] if args.profiles else None
        doctor.run(load_params(args.params), names)
    elif args.command == "submit":
        from pipeline.commands import submit

        competition = load_params(args.params).data.competition
        submit.run(
            competition, args.message, force=args.force, push=args.push, wait=args.wait,
            wait_limit=args.wait_limit, poll_interval=args.poll_interval,
            daily_limit=args.daily_limit,
        )  # fmt: skip
    elif args.command == "scores":
        from pipeline.commands import scores

        scores.run(load_params(args.params).data.competition)
    elif args.command == "plots":
        from pipeline.commands import plots

        return plots.run(args.revisions)
    elif args.command == "experiments":
        from pipeline.commands import experiments

        experiments.run(apply=args.apply)
    elif args.command == "ensemble":
        from pipeline.commands import ensemble

        if args.action == "add":
            ensemble.add(args.source, args.name, run_model=load_params(args.params).model)
        elif args.action == "list":
            ensemble.show(run_model=load_params(args.params).model)
        else:
            ensemble.remove(args.name)
    elif args.command == "reproduce":
        from pipeline.commands import reproduce

        return 0 if reproduce.run(args.run, args.into) else 1
    else:
        from pipeline.integrations.dvc_parent import stop_with_dvc

        stop_with_dvc(args.command)  # under `dvc repro`: never outlive it (an orphan's outputs)
        notes: list[str] = []
        require_project_root(args.params)
        try:
            params = load_params(args.params, notes)
            if args.command == "train":  # the first stage that reads model and train
                for note in notes:
                    print(printable(note), file=sys.stderr)
            run_stage(args.command, params, args.params)
        except PipelineError as error:
            if args.command == "check":  # it runs before the other stages remove anything
                raise PipelineError(
                    f"{error} (checked before the other stages ran: their outputs are as they were)"
                ) from None
            raise PipelineError(f"{error}{restore_hint(args.params)}") from None
    return 0


def require_project_root(params_path: Path) -> None:
    """Stages write data/, models/ and metrics/ where they run: started in a sub-folder with
    `--params ../params.yaml`, fetch wrote data/data/raw. A params file beside a dvc.yaml marks
    the project's root, and a stage runs there."""
    root = Path(params_path).resolve().parent
    if root != Path.cwd().resolve() and (root / "dvc.yaml").is_file():
        raise PipelineError(
            f"{params_path}: a stage runs from the project's root, where params.yaml and "
            f"dvc.yaml are: `cd {root}` first (nothing was written)"
        )


def restore_hint(params_path: Path) -> str:
    """How to get back to the last commit after a failed stage: DVC removed the stage's outputs
    before running it (the metrics files git tracks too), updated dvc.lock for the stages that
    ran, and a `dvc exp run -S` edit may stay in the params file. "" when no tracked file
    differs from the commit, outside git, or in the copy a `dvc exp run --temp`/`--queue` made
    (the workspace was never touched)."""
    from pipeline.integrations.repository import git, in_experiment_copy

    if in_experiment_copy():
        return ""
    try:
        changed = git("diff", "--name-only", "HEAD").splitlines()
    except PipelineError:
        return ""
    if not changed:
        return ""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return (
        f" ({shown} differ from the last commit: `git stash` puts those changes aside, `git "
        "stash pop` brings them back; then `dvc checkout` restores the committed run's outputs)"
    )


def tolerate_narrow_terminals() -> None:
    """Under a C locale (LC_ALL=C on an HPC node, a bare container) stdout is ASCII, and a
    table's "—" or doctor's "→" crashed the command: what the stream cannot encode becomes "?"."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> int:
    tolerate_narrow_terminals()
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except PipelineError as error:
        if args.debug:
            raise
        # one line, whatever a library put in the message it wraps (file and problem first), and
        # no control characters: a checkpoint's key names reach some messages
        print("error: " + printable(" ".join(str(error).split())), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
