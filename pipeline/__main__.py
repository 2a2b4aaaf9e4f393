"""`python -m pipeline <stage>`: run one pipeline stage with the params in params.yaml.

`python -m pipeline profile NAME` puts a training profile's sections into params.yaml.
Expected failures (`PipelineError`) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS_PATH, Params, load_params
from pipeline.errors import PipelineError

STAGES = ("fetch", "prepare", "train", "select", "predict")
# The params each stage reads, as dvc.yaml must declare them (a test holds the two together).
STAGE_PARAMS = {
    "fetch": ["data"],
    "prepare": ["prepare"],
    "train": ["model", "train"],
    "select": ["select", "train.device", "train.mixed_precision"],
    # predict records every param in its run manifest, so it depends on them all
    "predict": ["data", "prepare", "model", "train", "select", "predict"],
}


def run_stage(stage: str, params: Params) -> None:
    # Each stage's module is imported only when it runs: fetch and prepare never load dvclive.
    if stage == "fetch":
        from pipeline import fetch

        fetch.run(params.data)
    elif stage == "prepare":
        from pipeline import prepare

        prepare.run(params.prepare)
    elif stage == "train":
        from pipeline import train

        train.run(params.model, params.train)
    elif stage == "select":
        from pipeline import select

        select.run(params.select, params.train.device, params.train.mixed_precision)
    elif stage == "predict":
        from pipeline import predict

        predict.run(
            params.predict, params.train.device, params.train.mixed_precision,
            all_params=dataclasses.asdict(params),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=(*STAGES, "profile"))
    parser.add_argument("profile", nargs="?", help="with `profile`: fast, default, seed or cpu")
    parser.add_argument(
        "--params",
        type=Path,
        default=DEFAULT_PARAMS_PATH,
        help="params file (default: params.yaml)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of expected errors too"
    )
    args = parser.parse_args(argv)
    if (args.stage == "profile") != (args.profile is not None):
        parser.error("a profile name goes with `profile`, and only with it")
    try:
        if args.stage == "profile":
            from pipeline.profiles import apply_profile

            apply_profile(args.profile, args.params)
            print(f"{args.params}: model and train sections now hold profile {args.profile!r}")
        else:
            run_stage(args.stage, load_params(args.params))
    except PipelineError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
