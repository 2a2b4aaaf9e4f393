"""`python -m pipeline experiments [--apply]`: DVC experiments ranked by validation accuracy.

Reads `dvc exp show --json` (the experiments of the checked-out commit: a queued sweep's among
them) and ranks those that finished by `metrics/predict.json`'s `val_accuracy`: the validation
accuracy of the model that wrote the submission (with distillation, the last student; else the
checkpoint, weights and TTA select chose); one that stopped before predict has none. The rich
table shows each one's
name, accuracy, TTA and the params it changed against the commit. `--apply` runs
`dvc exp apply` on the best, so the workspace holds its params, metrics and outputs (then
`git commit` it, or `python -m pipeline submit` after committing).
"""

from __future__ import annotations

import json

from rich.table import Table

from pipeline.errors import PipelineError
from pipeline.integrations.repository import dvc, last_error_line
from pipeline.paths import PREDICT_METRICS_PATH
from pipeline.reporting import console, table_console

MISSING = "—"


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _params(data: dict) -> dict[str, object]:
    return _flat((data.get("params") or {}).get("params.yaml", {}).get("data") or {})


def is_synthetic(params: dict[str, object]) -> bool:
    """An experiment on synthetic data (the README's demo): ranked, never applied."""
    return params.get("data.source") == "synthetic"


def submitted_metrics(metrics: dict) -> dict:
    """predict.json's figures: the model behind the CSV (the project's one metrics file)."""
    return (metrics.get(PREDICT_METRICS_PATH.as_posix()) or {}).get("data") or {}


def ranked(show: list[dict]) -> list[dict]:
    """The experiments in `dvc exp show --json` output, best validation accuracy first."""
    rows = []
    for entry in show:
        if entry.get("rev") == "workspace":
            continue
        baseline = _params(entry.get("data") or {})
        for experiment in entry.get("experiments") or []:
            executor = experiment.get("executor") or {}
            state = executor.get("state") or "done"
            for rev in (experiment.get("revs") or [])[:1]:  # the experiment's own commit
                data = rev.get("data") or {}
                selected = submitted_metrics(data.get("metrics") or {})
                params = _params(data)
                finished = state in ("success", "done")  # a failed or running one shows the
                rows.append({  # baseline's committed metrics: never ranked
                    "name": rev.get("name") or experiment.get("name") or rev["rev"][:7],
                    "rev": rev["rev"], "state": state,
                    "val_accuracy": selected.get("val_accuracy") if finished else None,
                    "tta": selected.get("tta") if finished else None,
                    "changed": {k: v for k, v in params.items() if baseline.get(k) != v},
                    "synthetic": is_synthetic(params),
                })  # fmt: skip
    return sorted(rows, key=lambda row: (row["val_accuracy"] is None, -(row["val_accuracy"] or 0)))


def run(apply: bool = False) -> list[dict]:
    result = dvc("exp", "show", "--json")
    if result.returncode != 0:
        raise PipelineError(f"experiments: dvc exp show failed ({last_error_line(result)})")
    rows = ranked(json.loads(result.stdout or "[]"))
    if not rows:
        raise PipelineError(
            "experiments: none for this commit; queue a sweep with `dvc exp run --queue -S ...` "
            "and run it with `dvc queue start -j N` (docs/scaling.md)"
        )
    table = Table(title="experiments by validation accuracy of the submitted model")
    for column in ("rank", "name", "state", "val_accuracy", "tta", "changed params"):
        table.add_column(column)
    for rank, row in enumerate(rows, start=1):
        accuracy = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else MISSING
        changed = ", ".join(f"{k}={v}" for k, v in sorted(row["changed"].items())) or MISSING
        name = row["name"] + (" (synthetic demo)" if row["synthetic"] else "")
        table.add_row(  # names and params are the user's text: never rich markup
            str(rank), str(name), str(row["state"]), accuracy,
            str(row["tta"] or MISSING), changed,
        )  # fmt: skip
    table_console().print(table)
    if apply:
        real = [row for row in rows if row["val_accuracy"] is not None and not row["synthetic"]]
        if not real:
            raise PipelineError(
                "experiments: no experiment on the competition's data has finished with a "
                "validation accuracy (a synthetic demo is never applied)"
            )
        best = real[0]
        applied = dvc("exp", "apply", best["rev"])
        if applied.returncode != 0:
            raise PipelineError(
                f"experiments: dvc exp apply {best['name']} failed ({last_error_line(applied)})"
            )
        console.print(
            f"experiments: applied {best['name']} (val accuracy {best['val_accuracy']:.4f}): the "
            "workspace now holds its params and outputs; commit them to keep it"
        )
    return rows
