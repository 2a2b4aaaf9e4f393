"""Stage 4, select → models/best.pt: the checkpoint with the highest validation accuracy.

Every checkpoint is scored again here on the validation set (not trusted from training logs);
ties go to the later epoch. The winner is copied to models/best.pt and the table of candidates
goes to metrics/select_candidates.csv (a DVC plot).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import torch

from pipeline.augment import to_device_set
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.config import SelectParams
from pipeline.datasets import load_split
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_json_atomic, write_text_atomic
from pipeline.models import count_trainable_params
from pipeline.paths import (
    BEST_PATH,
    CHECKPOINT_DIR,
    PREPARED_DIR,
    SELECT_CANDIDATES_PATH,
    SELECT_METRICS_PATH,
)
from pipeline.reporting import console
from pipeline.tta import evaluate


def choose_best(candidates: list[dict]) -> dict:
    """Highest `val_accuracy`; among equals the latest epoch."""
    return max(candidates, key=lambda row: (row["val_accuracy"], row["epoch"]))


def run(
    params: SelectParams,
    device_name: str,  # train.device
    mixed_precision: bool,  # train.mixed_precision
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    best_path: Path = BEST_PATH,
) -> None:
    paths = sorted(checkpoint_dir.glob("epoch_*.pt"))
    if not paths:
        raise PipelineError(
            f"{checkpoint_dir}: no checkpoints (epoch_*.pt); run the train stage first"
        )
    device = resolve_device(device_name)
    val_split = load_split(prepared_dir, "val")
    candidates = []
    eval_set = None
    for path in paths:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(path, checkpoint).to(
            device, memory_format=torch.channels_last
        )
        if eval_set is None:  # normalised with the training statistics stored in the checkpoint
            norm = checkpoint["normalization"]
            eval_set = to_device_set(
                val_split["images"], val_split["labels"], norm["mean"], norm["std"], device
            )
        accuracy, loss = evaluate(model, *eval_set, "none", params.batch_size, mixed_precision)
        candidates.append({
            "checkpoint": path.name, "epoch": int(checkpoint["epoch"]), "val_accuracy": accuracy,
            "val_loss": loss, "model_params": count_trainable_params(model),
        })  # fmt: skip
        console.print(f"select: {path.name} val accuracy {accuracy:.4f}")
    best = choose_best(candidates)
    last = max(candidates, key=lambda row: row["epoch"])
    with atomic_path(best_path) as temp_path:
        shutil.copyfile(checkpoint_dir / best["checkpoint"], temp_path)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(candidates[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(candidates)
    write_text_atomic(SELECT_CANDIDATES_PATH, table.getvalue())
    write_json_atomic(
        SELECT_METRICS_PATH,
        {
            "checkpoint": best["checkpoint"], "epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
            "last_epoch_val_accuracy": last["val_accuracy"], "model_params": best["model_params"],
        },
    )  # fmt: skip
    console.print(
        f"select: best is {best['checkpoint']} (val accuracy {best['val_accuracy']:.4f}) → {best_path}"
    )
