"""Stage 4, select → models/best.pt: the checkpoint, weights and TTA with the best validation accuracy.

Candidates are every checkpoint × its raw weights and, when training kept an EMA, its EMA
weights × every policy in `select.tta_policies`, all scored again here on the validation set
(not trusted from training logs). Ties go to the later epoch, then to the EMA, then to the
cheaper TTA. The winner is written to models/best.pt with the chosen weights as its
`model_state`, plus `weights: raw | ema` and `tta` (which `predict.tta: auto` applies). The whole
table goes to metrics/select_candidates.csv (a DVC plot), and metrics/select.json says how much
the winner gains over the last checkpoint's raw weights without TTA.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from pipeline.augment import to_device_set
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.config import SelectParams
from pipeline.datasets import load_split
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.models import count_trainable_params
from pipeline.paths import (
    BEST_PATH,
    CHECKPOINT_DIR,
    PREPARED_DIR,
    SELECT_CANDIDATES_PATH,
    SELECT_METRICS_PATH,
)
from pipeline.reporting import console
from pipeline.tta import TTA_POLICIES, evaluate


def choose_best(candidates: list[dict]) -> dict:
    """Highest `val_accuracy`; among equals the latest epoch, then the EMA weights, then cheaper TTA."""
    return max(
        candidates,
        key=lambda row: (
            row["val_accuracy"],
            row["epoch"],
            row["weights"] == "ema",
            -TTA_POLICIES.index(row["tta"]),
        ),
    )


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
        weight_sets = {"raw": checkpoint["model_state"]}
        if checkpoint.get("ema_state") is not None:
            weight_sets["ema"] = checkpoint["ema_state"]
        for weights, state in weight_sets.items():
            model.load_state_dict(state)
            for policy in params.tta_policies:
                accuracy, loss = evaluate(
                    model, *eval_set, policy, params.batch_size, mixed_precision
                )
                candidates.append({
                    "checkpoint": path.name, "epoch": int(checkpoint["epoch"]), "weights": weights,
                    "tta": policy, "val_accuracy": accuracy, "val_loss": loss,
                    "model_params": count_trainable_params(model),
                })  # fmt: skip
                console.print(
                    f"select: {path.name} {weights} weights, TTA {policy}: val accuracy {accuracy:.4f}"
                )
    best = choose_best(candidates)
    baseline_tta = params.tta_policies[0] if "none" not in params.tta_policies else "none"
    last = max(
        (row for row in candidates if row["weights"] == "raw" and row["tta"] == baseline_tta),
        key=lambda row: row["epoch"],
    )
    winner = load_checkpoint(checkpoint_dir / best["checkpoint"])
    winner["model_state"] = (
        winner["ema_state"] if best["weights"] == "ema" else winner["model_state"]
    )
    winner["weights"], winner["tta"] = best["weights"], best["tta"]
    save_checkpoint(best_path, winner)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(candidates[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(candidates)
    write_text_atomic(SELECT_CANDIDATES_PATH, table.getvalue())
    write_json_atomic(
        SELECT_METRICS_PATH,
        {
            "checkpoint": best["checkpoint"], "epoch": best["epoch"], "weights": best["weights"],
            "tta": best["tta"], "val_accuracy": best["val_accuracy"],
            "last_epoch_val_accuracy": last["val_accuracy"], "last_epoch_tta": baseline_tta,
            "gain_over_last_epoch": best["val_accuracy"] - last["val_accuracy"],
            "model_params": best["model_params"], "candidates": len(candidates),
        },
    )  # fmt: skip
    console.print(
        f"select: best is {best['checkpoint']} {best['weights']} weights, TTA {best['tta']} "
        f"(val accuracy {best['val_accuracy']:.4f}, {best['val_accuracy'] - last['val_accuracy']:+.4f} "
        f"over the last epoch's raw weights with TTA {baseline_tta}) → {best_path}"
    )
