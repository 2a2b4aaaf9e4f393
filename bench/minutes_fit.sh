#!/usr/bin/env bash
# Benchmark 8: does `python -m pipeline doctor` estimate a profile's training time here, and
# does `profile NAME --minutes M` make `dvc repro` train for M minutes here? (issue 26)
#
#   bench/minutes_fit.sh ARCHIVE [MINUTES] [PROFILE] [WORKDIR]
#
# ARCHIVE is a CIFAR-10 python .tar.gz; MINUTES defaults to 10, PROFILE to cpu, WORKDIR to a new
# temporary folder. In WORKDIR it clones this checkout (committed files, as a user's clone has
# them), points data.source at the archive (test_batch's images, unlabelled, stand in for the
# custom test pickle), then, as a user would: `doctor --profiles PROFILE`, `profile PROFILE
# --minutes MINUTES`, `dvc repro train`. It prints doctor's estimate, the epochs chosen and the
# measured training time (metrics/train/metrics.json's train_seconds: epochs and validation).
# Run it on an otherwise idle machine: the estimate and the run share it.
set -euo pipefail
archive=$(realpath "$1")
minutes=${2:-10}
profile=${3:-cpu}
workdir=${4:-$(mktemp -d)}
checkout=$(cd "$(dirname "$0")/.." && pwd)
project="$workdir/project"
rm -rf "$project"
git clone -q "$checkout" "$project"
cd "$project"
export DVC_NO_ANALYTICS=1
python - "$archive" "$workdir/custom_test.pkl" <<'EOF'
import pickle, sys, tarfile
import numpy as np
with tarfile.open(sys.argv[1]) as archive:
    batch = pickle.load(archive.extractfile("cifar-10-batches-py/test_batch"), encoding="bytes")
images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
with open(sys.argv[2], "wb") as handle:
    pickle.dump({b"data": np.ascontiguousarray(images), b"ids": np.arange(len(images))}, handle)
EOF
sed -i "s|^  source: auto |  source: local |; s|^  path: \"\" |  path: $archive |; s|^  custom_test_path: \"\" |  custom_test_path: $workdir/custom_test.pkl |" params.yaml
grep -q "^  source: local " params.yaml && grep -q "^  path: $archive " params.yaml
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ×$(nproc); $(date -u +%F\ %H:%M) UTC"
python -m pipeline doctor --profiles "$profile"
python -m pipeline profile "$profile" --minutes "$minutes"
started=$(date +%s)
dvc repro train
echo "dvc repro train (fetch, prepare, train): $(( $(date +%s) - started )) s of wall time"
python - "$minutes" <<'EOF'
import json, sys
metrics = json.load(open("metrics/train/metrics.json"))
target = float(sys.argv[1]) * 60
seconds = metrics["train_seconds"]
print(f"trained {metrics['step']} epochs in {seconds:.1f} s against {target:.0f} s asked "
      f"({seconds / target - 1:+.1%}); final val accuracy {metrics['val_accuracy']:.4f}")
EOF
