"""Stage 4, select → models/best.pt: the checkpoint, weights and TTA with the best validation accuracy.

Candidates are every checkpoint × its raw weights and, when training kept an EMA, its EMA
weights × every policy in `select.tta_policies`, all scored again here on the validation set
(not trusted from training logs). Ties go to the later epoch, then to the EMA, then to the
cheaper TTA. The winner is written to models/best.pt with the chosen weights as its
`model_state`, plus `weights: raw | ema` and `tta` (which `predict.tta: auto` applies). The whole
table goes to metrics/select_candidates.csv (a DVC plot), and metrics/select.json says how much
the winner gains over the last checkpoint's raw weights without TTA.

Seed ensembles: each models/ensemble/*.pt (another run's best.pt, put there by
`python -m pipeline ensemble add`) is a member. Before any inference the budget is checked over
the whole ensemble (this run's model + every member ≤ model.max_params) and the members must
have been trained on the same prepared data (same normalisation and classes). After the single
winner is chosen, the ensemble (winner + members, logits averaged) is scored under each TTA
policy beside each of its members; `select.ensemble: auto` keeps it when it beats the single
winner, `always` keeps it anyway, `never` ignores the members. select.json's `ensemble` entry
reports the ensemble against its members; best.pt then carries the members (checkpoints.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config.params import SelectParams
from pipeline.data.prepared import load_split
from pipeline.engine.device import resolve_device
from pipeline.engine.models import Ensemble, check_ensemble_budget, count_trainable_params
from pipeline.engine.normalise import to_device_set
from pipeline.engine.tta import TTA_POLICIES, evaluate
from pipeline.errors import PipelineError
from pipeline.files import file_md5, write_json_atomic, write_text_atomic
from pipeline.paths import (
    BEST_PATH,
    CHECKPOINT_DIR,
    ENSEMBLE_DIR,
    PREPARED_DIR,
    SELECT_CANDIDATES_PATH,
    SELECT_METRICS_PATH,
)
from pipeline.records.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.reporting import console


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


@dataclass
class Member:
    """One models/ensemble/*.pt file: another run's selected model."""

    path: Path
    checkpoint: dict
    model: nn.Module
    md5: str

    @property
    def params(self) -> int:
        return count_trainable_params(self.model)


def load_members(ensemble_dir: Path) -> list[Member]:
    """The ensemble members in `ensemble_dir`, by file name; none if the folder is absent."""
    members = []
    for path in sorted(ensemble_dir.glob("*.pt")):
        checkpoint = load_checkpoint(path)
        if checkpoint.get("ensemble"):
            raise PipelineError(f"{path}: is itself an ensemble; members must be single models")
        model = model_from_checkpoint(path, checkpoint)
        members.append(Member(path, checkpoint, model, file_md5(path)))
    return members


def check_members(
    run_checkpoint_path: Path, run_checkpoint: dict, members: list[Member], max_params: int
) -> None:
    """Refuse, before any inference, an ensemble over budget or trained on other data."""
    run_model = model_from_checkpoint(run_checkpoint_path, run_checkpoint)
    check_ensemble_budget(
        [
            (
                f"this run's {run_checkpoint['model_config']['name']}",
                count_trainable_params(run_model),
            )
        ]
        + [(str(member.path), member.params) for member in members],
        max_params,
        "remove members (python -m pipeline ensemble remove NAME), use smaller models, or set "
        "select.ensemble: never",
    )
    for member in members:
        for key in ("normalization", "class_names"):
            if member.checkpoint.get(key) != run_checkpoint.get(key):
                raise PipelineError(
                    f"{member.path}: trained on other data than this run (its {key} differs); "
                    "members must be trained on the same prepared data"
                )


def score_ensemble(
    run_model: nn.Module,
    members: list[Member],
    eval_set: tuple[torch.Tensor, torch.Tensor],
    params: SelectParams,
    mixed_precision: bool,
) -> dict:
    """The ensemble (this run's winner + members) and each member, under every TTA policy.

    Returns the best policy's scores: the ensemble's accuracy and loss, and each member's
    accuracy under that same policy (ties go to the cheaper policy).
    """
    models = [run_model] + [member.model for member in members]
    names = ["this run"] + [member.path.stem for member in members]
    scored = []
    for policy in params.tta_policies:
        accuracy, loss = evaluate(
            Ensemble(models), *eval_set, policy, params.batch_size, mixed_precision
        )
        member_accuracies = [
            evaluate(model, *eval_set, policy, params.batch_size, mixed_precision)[0]
            for model in models
        ]
        console.print(
            f"select: ensemble of {len(models)}, TTA {policy}: val accuracy {accuracy:.4f} "
            f"(members: {', '.join(f'{n} {a:.4f}' for n, a in zip(names, member_accuracies, strict=True))})"
        )
        scored.append({"tta": policy, "val_accuracy": accuracy, "val_loss": loss,
                       "member_accuracies": member_accuracies})  # fmt: skip
    return max(scored, key=lambda row: (row["val_accuracy"], -TTA_POLICIES.index(row["tta"])))


def run(
    params: SelectParams,
    max_params: int,  # model.max_params: the budget covers the whole ensemble
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    best_path: Path = BEST_PATH,
    ensemble_dir: Path = ENSEMBLE_DIR,
) -> None:
    paths = sorted(checkpoint_dir.glob("epoch_*.pt"))
    if not paths:
        raise PipelineError(
            f"{checkpoint_dir}: no checkpoints (epoch_*.pt); run the train stage first"
        )
    members = load_members(ensemble_dir) if params.ensemble != "never" else []
    if members:
        check_members(paths[-1], load_checkpoint(paths[-1]), members, max_params)
    device = resolve_device(params.device, "select.device")
    mixed_precision = params.mixed_precision
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
    selected = {"val_accuracy": best["val_accuracy"], "tta": best["tta"],
                "model_params": best["model_params"]}  # fmt: skip
    ensemble_report = None
    if members:
        run_model = model_from_checkpoint(best_path, winner).to(
            device, memory_format=torch.channels_last
        )
        for member in members:
            member.model.to(device, memory_format=torch.channels_last)
        ensemble = score_ensemble(run_model, members, eval_set, params, mixed_precision)
        used = params.ensemble == "always" or ensemble["val_accuracy"] > best["val_accuracy"]
        total_params = best["model_params"] + sum(member.params for member in members)
        ensemble_report = {
            "used": used, "mode": params.ensemble, "size": len(members) + 1,
            "tta": ensemble["tta"], "val_accuracy": ensemble["val_accuracy"],
            "val_loss": ensemble["val_loss"], "model_params": total_params,
            "max_params": max_params,
            "best_member_val_accuracy": max(ensemble["member_accuracies"]),
            "gain_over_best_member": ensemble["val_accuracy"] - max(ensemble["member_accuracies"]),
            "gain_over_single_winner": ensemble["val_accuracy"] - best["val_accuracy"],
            "members": [
                {"name": "this run", "file": None, "model": best["checkpoint"],
                 "model_params": best["model_params"], "val_accuracy": ensemble["member_accuracies"][0]}
            ] + [
                {"name": member.path.stem, "file": member.path.as_posix(), "md5": member.md5,
                 "source": member.checkpoint.get("source"), "model_params": member.params,
                 "val_accuracy": accuracy}
                for member, accuracy in zip(members, ensemble["member_accuracies"][1:], strict=True)
            ],
        }  # fmt: skip
        if used:
            winner["tta"] = ensemble["tta"]
            winner["ensemble"] = [
                {"name": member.path.stem, "source": member.checkpoint.get("source"),
                 "md5": member.md5, "model_config": member.checkpoint["model_config"],
                 "model_state": member.checkpoint["model_state"], "model_params": member.params}
                for member in members
            ]  # fmt: skip
            selected = {"val_accuracy": ensemble["val_accuracy"], "tta": ensemble["tta"],
                        "model_params": total_params}  # fmt: skip
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
            "tta": selected["tta"], "val_accuracy": selected["val_accuracy"],
            "single_model_val_accuracy": best["val_accuracy"], "single_model_tta": best["tta"],
            "last_epoch_val_accuracy": last["val_accuracy"], "last_epoch_tta": baseline_tta,
            "gain_over_last_epoch": selected["val_accuracy"] - last["val_accuracy"],
            "model_params": selected["model_params"], "candidates": len(candidates),
        } | ({"ensemble": ensemble_report} if ensemble_report else {}),
    )  # fmt: skip
    console.print(
        f"select: best single model is {best['checkpoint']} {best['weights']} weights, TTA "
        f"{best['tta']} (val accuracy {best['val_accuracy']:.4f}, "
        f"{best['val_accuracy'] - last['val_accuracy']:+.4f} over the last epoch's raw weights "
        f"with TTA {baseline_tta})"
    )
    if ensemble_report:
        verdict = (
            "used" if ensemble_report["used"] else "not used (it does not beat the single model)"
        )
        console.print(
            f"select: ensemble of {ensemble_report['size']} models, "
            f"{ensemble_report['model_params']:,} of {max_params:,} params, TTA "
            f"{ensemble_report['tta']}: val accuracy {ensemble_report['val_accuracy']:.4f}, "
            f"{ensemble_report['gain_over_best_member']:+.4f} over its best member: {verdict}"
        )
    console.print(f"select: → {best_path} (val accuracy {selected['val_accuracy']:.4f})")
