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
reports the ensemble against its members; best.pt then carries the members (records/checkpoint.py); records/ensemble.py reads
and checks them.

select.json's `adaptation_on_val` says what predict's test-time adaptation (`adapt`) does to the
winner when the validation images stand in for the custom test set: their accuracy labelled
one by one, after AdaBN on them, and after balanced assignment too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from pipeline.config.params import AdaptParams, SelectParams
from pipeline.data.prepared import load_split
from pipeline.engine.adapt import adapted_logits, assign_labels
from pipeline.engine.device import Precision, choose_precision, resolve_device
from pipeline.engine.models import Ensemble, count_trainable_params
from pipeline.engine.normalise import to_device_set
from pipeline.engine.tta import TTA_POLICIES, evaluate
from pipeline.errors import PipelineError
from pipeline.files import write_json_atomic
from pipeline.paths import (
    BEST_PATH,
    CHECKPOINT_DIR,
    ENSEMBLE_DIR,
    PREPARED_DIR,
    SELECT_CANDIDATES_PATH,
    SELECT_METRICS_PATH,
)
from pipeline.records.checkpoint import Checkpoint
from pipeline.records.ensemble import MemberFile, check_members, load_members
from pipeline.records.plot_csv import write_plot_csv
from pipeline.reporting import console

EvalSet = tuple[torch.Tensor, torch.Tensor]  # normalised validation images, labels on the device


def candidate_rank(row: dict) -> tuple:
    """Highest `val_accuracy`; among equals the latest epoch, then the EMA weights, then cheaper TTA."""
    return (
        row["val_accuracy"],
        row["epoch"],
        row["weights"] == "ema",
        -TTA_POLICIES.index(row["tta"]),
    )


def choose_best(candidates: list[dict]) -> dict:
    return max(candidates, key=candidate_rank)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    return model.to(device, memory_format=torch.channels_last)


def score_checkpoints(
    paths: list[Path], eval_set: EvalSet, params: SelectParams, device: torch.device,
    precision: Precision,
) -> list[dict]:  # fmt: skip
    """One row per checkpoint × raw/EMA weights × TTA policy: its validation accuracy and loss."""
    candidates = []
    for path in paths:
        checkpoint = Checkpoint.load(path)
        model = on_device(checkpoint.model(path), device)
        weight_sets = {"raw": checkpoint.model_state}
        if checkpoint.ema_state is not None:
            weight_sets["ema"] = checkpoint.ema_state
        for weights, state in weight_sets.items():
            model.load_state_dict(state)
            for policy in params.tta_policies:
                accuracy, loss = evaluate(
                    model, *eval_set, policy, params.batch_size, precision,
                    params.tta_fraction,
                )  # fmt: skip
                candidates.append({
                    "checkpoint": path.name, "epoch": int(checkpoint.epoch), "weights": weights,
                    "tta": policy, "val_accuracy": accuracy, "val_loss": loss,
                    "model_params": count_trainable_params(model),
                })  # fmt: skip
    return candidates


SHOWN_CANDIDATES = 5  # select's table: the best few, not a line for each of dozens


def candidates_table(candidates: list[dict], top: int = SHOWN_CANDIDATES) -> Table:
    """The best `top` candidates, best first (choose_best's order), in a compact table."""
    ranked = sorted(candidates, key=candidate_rank, reverse=True)
    table = Table(
        title=f"select: the best {min(top, len(ranked))} of {len(ranked)} candidates",
        title_justify="left", box=None, pad_edge=False,
    )  # fmt: skip
    for column in ("checkpoint", "weights", "TTA", "val accuracy"):
        table.add_column(column, justify="right" if column == "val accuracy" else "left")
    for row in ranked[:top]:
        table.add_row(row["checkpoint"], row["weights"], row["tta"], f"{row['val_accuracy']:.4f}")
    return table


def winning_checkpoint(checkpoint_dir: Path, best: dict) -> Checkpoint:
    """The winner's checkpoint with the chosen weights as its model_state, and its TTA."""
    checkpoint = Checkpoint.load(checkpoint_dir / best["checkpoint"])
    state = checkpoint.ema_state if best["weights"] == "ema" else checkpoint.model_state
    return dataclasses.replace(
        checkpoint, model_state=state, weights=best["weights"], tta=best["tta"]
    )


def score_ensemble(
    run_model: nn.Module, members: list[MemberFile], eval_set: EvalSet, params: SelectParams,
    precision: Precision,
) -> dict:  # fmt: skip
    """The ensemble (this run's winner + members) and each member, under every TTA policy.

    Returns the best policy's scores: the ensemble's accuracy and loss, and each member's
    accuracy under that same policy (ties go to the cheaper policy).
    """
    models = [run_model] + [member.model for member in members]
    names = ["this run"] + [member.name for member in members]
    scored = []
    for policy in params.tta_policies:
        accuracy, loss = evaluate(
            Ensemble(models), *eval_set, policy, params.batch_size, precision,
            params.tta_fraction,
        )  # fmt: skip
        member_accuracies = [
            evaluate(
                model,
                *eval_set,
                policy,
                params.batch_size,
                precision,
                params.tta_fraction,
            )[0]  # fmt: skip
            for model in models
        ]
        console.print(
            f"select: ensemble of {len(models)}, TTA {policy}: val accuracy {accuracy:.4f} "
            f"(members: {', '.join(f'{n} {a:.4f}' for n, a in zip(names, member_accuracies, strict=True))})"
        )
        scored.append({"tta": policy, "val_accuracy": accuracy, "val_loss": loss,
                       "member_accuracies": member_accuracies})  # fmt: skip
    return max(scored, key=lambda row: (row["val_accuracy"], -TTA_POLICIES.index(row["tta"])))


def ensemble_report(
    best: dict, members: list[MemberFile], ensemble: dict, params: SelectParams, max_params: int
) -> dict:
    """select.json's `ensemble` entry: the ensemble against its members and the single winner."""
    used = params.ensemble == "always" or ensemble["val_accuracy"] > best["val_accuracy"]
    accuracies = ensemble["member_accuracies"]
    return {
        "used": used, "mode": params.ensemble, "size": len(members) + 1,
        "tta": ensemble["tta"], "val_accuracy": ensemble["val_accuracy"],
        "val_loss": ensemble["val_loss"],
        "model_params": best["model_params"] + sum(member.params for member in members),
        "max_params": max_params,
        "best_member_val_accuracy": max(accuracies),
        "gain_over_best_member": ensemble["val_accuracy"] - max(accuracies),
        "gain_over_single_winner": ensemble["val_accuracy"] - best["val_accuracy"],
        "members": [
            {"name": "this run", "file": None, "model": best["checkpoint"],
             "model_params": best["model_params"], "val_accuracy": accuracies[0]}
        ] + [
            {"name": member.name, "file": member.path.as_posix(), "md5": member.md5,
             "source": member.checkpoint.source, "model_params": member.params,
             "val_accuracy": accuracy}
            for member, accuracy in zip(members, accuracies[1:], strict=True)
        ],
    }  # fmt: skip


def adaptation_report(
    model: nn.Module, eval_set: EvalSet, tta: str, adapt: AdaptParams, params: SelectParams,
    precision: Precision, accuracy_without: float,
) -> dict | None:  # fmt: skip
    """The winner's validation accuracy when the validation images are labelled the way predict
    labels the custom test set (AdaBN on them, then balanced assignment), against without."""
    if not (adapt.batchnorm_on or adapt.balance_on != "none"):
        return None
    images, labels = eval_set
    logits = adapted_logits(
        model, images, tta, adapt.batchnorm_on, params.batch_size, precision,
        params.tta_fraction,
    )  # fmt: skip
    truth = labels.cpu().numpy()
    accuracy = {"without": accuracy_without}
    if adapt.batchnorm_on:
        accuracy["batchnorm"] = float((logits.argmax(1).cpu().numpy() == truth).mean())
    if adapt.balance_on != "none":
        labelled = assign_labels(logits, adapt.balance_on, adapt.prior)
        accuracy["batchnorm_and_balance" if adapt.batchnorm_on else "balance"] = float(
            (labelled == truth).mean()
        )
    return {"batchnorm": adapt.batchnorm_on, "balance": adapt.balance_on,
            "val_accuracy": accuracy}  # fmt: skip


def write_candidates(candidates: list[dict], path: Path = SELECT_CANDIDATES_PATH) -> None:
    """One row per candidate; `candidate` names its weights and TTA, the plot's series."""
    rows = [{"candidate": f"{row['weights']} + {row['tta']}"} | row for row in candidates]
    write_plot_csv(path, list(rows[0]), [list(row.values()) for row in rows])


def run(
    params: SelectParams,
    max_params: int,  # model.max_params: the budget covers the whole ensemble
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    best_path: Path = BEST_PATH,
    ensemble_dir: Path = ENSEMBLE_DIR,
    adapt: AdaptParams | None = None,  # reported: the winner under predict's adaptation
    autocast_dtype: str = "auto",  # train.autocast_dtype: inference in training's precision
) -> None:
    paths = sorted(checkpoint_dir.glob("epoch_*.pt"))
    if not paths:
        raise PipelineError(
            f"{checkpoint_dir}: no checkpoints (epoch_*.pt); run the train stage first"
        )
    members = load_members(ensemble_dir) if params.ensemble != "never" else []
    last_checkpoint = Checkpoint.load(paths[-1])
    if members:  # before any inference
        check_members(last_checkpoint, paths[-1], members, max_params)
    device = resolve_device(params.device, "select.device")
    precision = choose_precision(device, params.mixed_precision, autocast_dtype)
    console.print(f"select: {device.type}, {precision.name} ({precision.reason})")
    val_split = load_split(prepared_dir, "val")
    norm = last_checkpoint.normalization  # the training statistics, as every checkpoint holds
    eval_set = to_device_set(
        val_split["images"], val_split["labels"], norm["mean"], norm["std"], device
    )

    console.print(
        f"select: scoring {len(paths)} checkpoints × raw/EMA weights × "
        f"{len(params.tta_policies)} TTA policies on {len(val_split['labels'])} validation images"
    )
    candidates = score_checkpoints(paths, eval_set, params, device, precision)
    console.print(candidates_table(candidates))
    best = choose_best(candidates)
    baseline_tta = params.tta_policies[0] if "none" not in params.tta_policies else "none"
    last = max(
        (row for row in candidates if row["weights"] == "raw" and row["tta"] == baseline_tta),
        key=lambda row: row["epoch"],
    )
    winner = winning_checkpoint(checkpoint_dir, best)
    selected = {"val_accuracy": best["val_accuracy"], "tta": best["tta"],
                "model_params": best["model_params"]}  # fmt: skip
    report = None
    if members:
        for member in members:
            on_device(member.model, device)
        run_model = on_device(winner.model(best_path), device)
        ensemble = score_ensemble(run_model, members, eval_set, params, precision)
        report = ensemble_report(best, members, ensemble, params, max_params)
        if report["used"]:
            winner = dataclasses.replace(
                winner, tta=ensemble["tta"], members=tuple(member.member() for member in members)
            )
            selected = {key: report[key] for key in ("val_accuracy", "tta", "model_params")}

    adaptation = None
    if adapt is not None:
        adapted_model = on_device(winner.model(best_path), device)
        adaptation = adaptation_report(
            adapted_model,
            eval_set,
            winner.tta,
            adapt,
            params,
            precision,
            selected["val_accuracy"],
        )
    write_candidates(candidates)  # first: a refused plot leaves best.pt as it was
    winner.save(best_path)
    write_json_atomic(
        SELECT_METRICS_PATH,
        {
            "checkpoint": best["checkpoint"], "epoch": best["epoch"], "weights": best["weights"],
            "tta": selected["tta"], "val_accuracy": selected["val_accuracy"],
            "single_model_val_accuracy": best["val_accuracy"], "single_model_tta": best["tta"],
            "last_epoch_val_accuracy": last["val_accuracy"], "last_epoch_tta": baseline_tta,
            "gain_over_last_epoch": selected["val_accuracy"] - last["val_accuracy"],
            "model_params": selected["model_params"], "candidates": len(candidates),
        } | ({"ensemble": report} if report else {})
        | ({"adaptation_on_val": adaptation} if adaptation else {}),
    )  # fmt: skip
    report_choice(best, last, baseline_tta, report, selected, max_params, best_path)
    if adaptation:
        console.print(
            "select: the validation images labelled as predict labels the custom test set: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v:.4f}" for k, v in adaptation["val_accuracy"].items()
            )
        )


def report_choice(
    best: dict, last: dict, baseline_tta: str, report: dict | None, selected: dict,
    max_params: int, best_path: Path,
) -> None:  # fmt: skip
    console.print(
        f"select: best single model is {best['checkpoint']} {best['weights']} weights, TTA "
        f"{best['tta']} (val accuracy {best['val_accuracy']:.4f}, "
        f"{best['val_accuracy'] - last['val_accuracy']:+.4f} over the last epoch's raw weights "
        f"with TTA {baseline_tta})"
    )
    if report:
        verdict = "used" if report["used"] else "not used (it does not beat the single model)"
        console.print(
            f"select: ensemble of {report['size']} models, {report['model_params']:,} of "
            f"{max_params:,} params, TTA {report['tta']}: val accuracy "
            f"{report['val_accuracy']:.4f}, {report['gain_over_best_member']:+.4f} over its best "
            f"member: {verdict}"
        )
    console.print(f"select: → {best_path} (val accuracy {selected['val_accuracy']:.4f})")
