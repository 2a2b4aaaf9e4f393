"""The benchmark scripts run end to end in their dry mode (tiny synthetic data, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_seed_recipe_benchmark_dry_run_records_its_figures(tmp_path: Path) -> None:
    record, figures = tmp_path / "BENCHMARKS.md", tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench/seed_recipe.py"), "--dry-run", "--record", str(record), "--json", str(figures)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(figures.read_text())
    assert (
        data["epochs"] == 2 and len(data["per_epoch"]) == 2 and 0.0 <= data["test_accuracy"] <= 1.0
    )
    text = record.read_text()
    assert "| torch |" in text and "| machine | CPU only" in text and "| date |" in text
