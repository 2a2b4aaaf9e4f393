#!/usr/bin/env bash
# The wheels `dvc repro` needs on the GPU machine (Python 3.12, x86_64, no registry there):
# dvc, dvclive and kaggle with everything they need, at the versions the tests run with here.
#
#   bash bench/gpu_wheels.sh [DIR]     # here, where pip reaches the registry; DIR: vendor/wheels
#
# About 32 MB: carry DIR in one `run` call (the limit is 64 MiB a call). gpu_session.sh's
# `pipeline` part installs them there when dvc is missing (--target, found through a .pth file
# placed after the machine's own packages, so its torch, numpy and the rest stay as they are).
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")/.." && pwd)/vendor/wheels}
mkdir -p "$dir"
# hydra-core (dvc's) needs antlr4-python3-runtime 4.9, published only as a pure-Python sdist
python3 -m pip wheel --no-deps -q -w "$dir" "antlr4-python3-runtime==4.9.3"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any --find-links "$dir" -d "$dir" \
    "dvc==3.67.1" "dvclive==3.49.1" "kaggle==2.2.5"
echo "gpu_wheels: $(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
