#!/usr/bin/env bash
# Issue 14's GPU measurements as one prepared sequence, for a session that is lent a GPU.
#
#   bash bench/gpu_session.sh ARCHIVE AIRBENCH_SDIST OUT [PART]   # on the GPU machine
#   bash bench/gpu_session.sh --dry-run OUT [PART]                # the same steps on the CPU, tiny data
#
# PART (default all) splits it into calls under the device's 10-minute limit per command:
#   airbench   benchmark 6: `fast` against airbench94, 10 timed runs each after a warm-up (~3 min)
#   default    one `default` run scored on test_batch (the ≤ 6-minute target; ~5 min)
#   deeper     the same run with the deeper residual airnet (model.residual_convs 2, widths
#              128/256/256, 4,898,816 params), fitted into 6 minutes of training: issue 14's
#              second `default` setting (~7 min; a session of its own, or in place of `default`)
#   reproduce  two `fast` runs with the same seed and train.deterministic on (their weights'
#              sha256 must match, or the step fails), then two with it off: the cost of
#              determinism (~2 min)
#   pipeline   benchmark 7: `dvc repro` of `fast` end to end on the real archive, a SIGKILL in
#              training's third epoch and the resumed `dvc repro`, compared byte for byte
#              (~4 min). The machine has no dvc: the wheels of bench/gpu_wheels.sh (32 MB, one
#              call of their own; GPU_SESSION_WHEELS, default vendor/wheels) are installed
#              first. Not in a dry run's `all`: tests/test_resume.py runs its CPU scenario.
# A session has 15 minutes of device time in all, start-up and the calls that carry the 170 MB
# archive in 60 MB parts included (`all` is over a command's 10 minutes on a GPU): run `airbench`
# and `reproduce` in one call, then `default` or `pipeline` (one of them fits; the other is
# the next lent session's; `deeper` after `default` has run in an earlier session). Every step appends to OUT/BENCHMARKS.md and writes OUT/NAME.json; a failed step
# is reported and the others still run; the exit status counts the failed steps.
#
# The GPU machine reaches no registry: the pipeline runs from this checkout (PYTHONPATH), with
# the machine's own torch, torchvision, timm, rich and yaml; airbench comes from its sdist.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DVC_NO_ANALYTICS=1  # benchmark 7's dvc calls: no analytics daemon on an offline machine
# the real CIFAR-10: the official archive (md5 as published) or the rebuilt copy this project
# benchmarks with (shared/data: same images, another order, so another checksum); checked here
# because the archive crosses to the GPU machine in parts, and a bad join must not cost its time
OFFICIAL_MD5=c58f30108f718f92721af3b95e74349a
REBUILT_SHA256=f6b4ff1baa68337fc389abbcfa4b03c82689d43e855a5f8d84ed309d0e657b27

if [[ "${1:-}" == "--dry-run" ]]; then
    dry=1 out=${2:?usage: gpu_session.sh --dry-run OUT [PART]} part=${3:-all}
    data=(--dry-run) sdist=()
else
    dry=0 archive=${1:?usage: gpu_session.sh ARCHIVE AIRBENCH_SDIST OUT [PART]}
    sdist=(--airbench-sdist "${2:?the airbench-0.1.8 sdist}") out=${3:?OUT} part=${4:-all}
    data=("$archive")
    sha256=$(sha256sum "$archive" | cut -d' ' -f1) md5=$(md5sum "$archive" | cut -d' ' -f1)
    if [[ "$md5" != "$OFFICIAL_MD5" && "$sha256" != "$REBUILT_SHA256" ]]; then
        echo "gpu_session: $archive: neither the official CIFAR-10 archive (md5 $OFFICIAL_MD5," \
            "found $md5) nor the rebuilt copy (sha256 $REBUILT_SHA256, found $sha256)" >&2
        exit 2
    fi
fi
mkdir -p "$out"
# prepared data, shared by every step and every call: not under OUT, which the device empties
# before each command (and whose files it copies back)
work=${GPU_SESSION_WORK:-$(dirname "$here")/.device-data/gpu_session_work/$( ((dry)) && echo dry || echo real)}
runs=10 default_runs=1 reproduce_warmups=1
(( dry )) && runs=2 reproduce_warmups=0  # the CPU compiles nothing: no warm-up to pay for

failed=0
step() {  # step NAME SCRIPT ARGS...: one benchmark, its figures in OUT/NAME.json
    local name=$1 script=$2
    shift 2
    echo "== $name: $script $*"
    if ! python3 "$here/$script" "${data[@]}" --workdir "$work" --record "$out/BENCHMARKS.md" \
        --json "$out/$name.json" "$@"; then
        echo "== $name: FAILED" >&2
        failed=$((failed + 1))
    fi
}

install_wheels() {  # dvc and its needs where the machine has none, after its own packages
    local wheels=${GPU_SESSION_WHEELS:-$(dirname "$here")/vendor/wheels} site=/tmp/gpu_session_site
    [[ -x "$site/bin/dvc" ]] && export PATH="$site/bin:$PATH"  # installed by an earlier call
    command -v dvc >/dev/null && python3 -c "import dvc" 2>/dev/null && return 0
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl || return 1
    # a .pth line is appended to sys.path: the machine's torch, numpy, rich... stay first
    echo "$site" >"$(python3 -c 'import site; print(site.getsitepackages()[0])')/gpu_session_wheels.pth"
    export PATH="$site/bin:$PATH"  # the dvc command
}

if [[ "$part" == all || "$part" == airbench ]]; then
    step vs_airbench vs_airbench.py "${sdist[@]}" --profile fast --runs "$runs" --warmup-runs 1
fi
if [[ "$part" == all || "$part" == default ]]; then
    step default gpu_profiles.py --profile default --runs "$default_runs"
fi
# not in a real `all`: beside `default` it is over a session's device time (a dry run has both)
if [[ "$part" == deeper || ( "$part" == all && $dry == 1 ) ]]; then
    step deeper gpu_profiles.py --profile default --runs "$default_runs" --budget-seconds 360 \
        --set 'model.widths=[128,256,256]' --set model.residual_convs=2
fi
if [[ "$part" == all || "$part" == reproduce ]]; then
    for deterministic in true false; do
        step "reproduce_deterministic_$deterministic" gpu_profiles.py --profile fast --runs 2 \
            --same-seed --warmup-runs "$reproduce_warmups" --set "train.deterministic=$deterministic"
    done
fi
if [[ "$part" == pipeline || ( "$part" == all && $dry == 0 ) ]]; then
    if ! command -v git >/dev/null || ! git -C "$(dirname "$here")" rev-parse 2>/dev/null; then
        # its projects are git + DVC ones made from this checkout's tracked files
        echo "== pipeline: FAILED (needs git and a git checkout: carry .git, or run it in a clone)" >&2
        failed=$((failed + 1))
    elif install_wheels; then
        step pipeline gpu_pipeline.py --profile fast
    else
        echo "== pipeline: FAILED (the dvc wheels did not install)" >&2
        failed=$((failed + 1))
    fi
fi
echo "gpu_session: $failed step(s) failed; figures in $out"
exit "$failed"
