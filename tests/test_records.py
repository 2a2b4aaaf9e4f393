"""What runs leave on disk, through their one reader and writer: checkpoints and run manifests."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import seed_model

from pipeline.classes import CIFAR10_CLASS_NAMES
from pipeline.engine.models import build_model, model_config
from pipeline.errors import PipelineError
from pipeline.records.checkpoint import Checkpoint, Member, load_checkpoint, save_checkpoint
from pipeline.records.manifest import RunSummary, load_manifest, read_manifest, run_files
from pipeline.records.plot_csv import write_plot_csv

TINY = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)


def _training_record() -> dict:
    return {
        "model_state": build_model(TINY).state_dict(), "ema_state": None, "val_accuracy_ema": None,
        "model_config": model_config(TINY), "epoch": 2, "val_accuracy": 0.5, "model_params": 1,
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "class_names": list(CIFAR10_CLASS_NAMES),
        "training": {"device": "cpu", "deterministic": True},
    }  # fmt: skip


def test_a_training_checkpoint_round_trips_with_exactly_its_keys(tmp_path: Path) -> None:
    record = _training_record()
    checkpoint = Checkpoint.from_dict(record, "x")
    assert (checkpoint.weights, checkpoint.tta, checkpoint.members) == (None, None, ())
    assert set(checkpoint.to_dict()) == set(record)  # no select or ensemble keys appear
    checkpoint.save(tmp_path / "a.pt")
    again = Checkpoint.load(tmp_path / "a.pt")
    assert again.epoch == 2 and again.class_names == CIFAR10_CLASS_NAMES
    again.save(tmp_path / "b.pt")
    save_checkpoint(tmp_path / "c.pt", again.to_dict())  # the same content, the same bytes
    assert (tmp_path / "b.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()


def test_a_selected_ensemble_checkpoint_keeps_its_members(tmp_path: Path) -> None:
    checkpoint = Checkpoint.from_dict(_training_record(), "x")
    member = Member("seed_1", {"file": "x.pt"}, "ab" * 16, model_config(TINY),
                    build_model(TINY).state_dict(), 1)  # fmt: skip
    best = dataclasses.replace(checkpoint, weights="ema", tta="flip", members=(member,))
    best.save(tmp_path / "best.pt")
    record = load_checkpoint(tmp_path / "best.pt")
    assert record["weights"] == "ema" and [m["name"] for m in record["ensemble"]] == ["seed_1"]
    loaded = Checkpoint.load(tmp_path / "best.pt")
    assert (
        loaded.members[0].md5 == "ab" * 16
        and loaded.model_name == "ensemble: seed_resnet + seed_resnet"
    )
    assert len(loaded.model(tmp_path / "best.pt").members) == 2


def test_a_damaged_member_entry_names_the_file(tmp_path: Path) -> None:
    record = _training_record() | {"ensemble": [{"name": "m"}]}
    with pytest.raises(PipelineError, match="best.pt: ensemble member 1 lacks model_config"):
        Checkpoint.from_dict(record, tmp_path / "best.pt")


@pytest.mark.parametrize(
    "damage, problem",
    [
        ({"model_params": "4,836,736"}, "model_params is not a whole number"),
        ({"model_params": -1}, "model_params is not a whole number"),
        ({"training": 5}, "training is not a mapping of plain values"),
        ({"training": {"device": torch.zeros(2)}}, "training is not a mapping of plain values"),
        ({"distillation": ["round", 1]}, "distillation is not a mapping"),
        ({"source": {"revision": {"a": {"b": {"c": {"d": 1}}}}}}, "source is not a mapping"),
        ({"model_config": "airnet"}, "model_config is not a mapping"),
        ({"ensemble": "seed_1"}, "ensemble is not a list of members"),
        ({"ensemble": [{"name": "../../x y", "model_config": {}, "model_state": {}}]},
         "ensemble member 1 has a name that is not a member's"),
        ({"ensemble": [{"name": "m", "md5": 5, "model_config": {}, "model_state": {}}]},
         "ensemble member 1 has an md5 that is not 32 hex digits"),
        ({"ensemble": [{"model_params": 1.5, "model_config": {}, "model_state": {}}]},
         "ensemble member 1 has a model_params that is not a whole number"),
        ({"ensemble": [{"source": "x", "model_config": {}, "model_state": {}}]},
         "ensemble member 1 has a source that is not a mapping"),
    ],
)  # fmt: skip
def test_a_checkpoint_field_of_the_wrong_kind_is_one_line_naming_it(
    tmp_path: Path, damage: dict, problem: str
) -> None:
    """A checkpoint from a shared remote or a friend: these fields reach select.json, the run
    manifest, the ensemble table and messages; of the wrong kind they were tracebacks there."""
    record = _training_record() | damage
    with pytest.raises(PipelineError, match="best.pt: ") as refused:
        Checkpoint.from_dict(record, tmp_path / "best.pt")
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_an_older_checkpoint_with_keys_its_model_ignores_still_loads() -> None:
    # written before such keys were refused: an airnet config carrying seed_resnet's keys
    airnet = seed_model(name="airnet", widths=[8, 16, 16], residual=False, whiten_bias_epochs=0)
    config = model_config(airnet) | {"base_width": 32, "blocks": [4, 4, 3], "dropout": 0.0}
    record = _training_record() | {
        "model_config": config,
        "model_state": build_model(airnet).state_dict(),
    }
    model = Checkpoint.from_dict(record, "old.pt").model("old.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_residual_airnet_checkpoint_from_before_residual_convs_loads_as_one_conv() -> None:
    """Its config lacks model.residual_convs and its state names one residual unit per group:
    it rebuilds with residual_convs 1 and loads strictly (the unit's names did not change)."""
    airnet = seed_model(name="airnet", widths=[8, 16, 16], residual=True, whiten_bias_epochs=0)
    config = model_config(airnet)
    del config["residual_convs"]
    state = build_model(airnet).state_dict()
    # group 1's names as the residual airnet had them before the key (models.py at 145dff7)
    bn = ("bias", "num_batches_tracked", "running_mean", "running_var", "weight")
    before = {"body.1.body.0.weight", "body.1.body.4.weight", "body.1.extra.0.weight"} | {
        f"body.1.{layer}.{name}" for layer in ("body.2", "body.5", "extra.1") for name in bn
    }
    assert {key for key in state if key.startswith("body.1.")} == before
    record = _training_record() | {"model_config": config, "model_state": state}
    checkpoint = Checkpoint.from_dict(record, "old.pt")
    model = checkpoint.model("old.pt")
    assert model.body[1].extra is not None and model.body[1].deeper is None
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    two = seed_model(name="airnet", widths=[8, 16, 16], residual=True, residual_convs=2)
    record |= {"model_state": build_model(two).state_dict()}  # weights of a deeper net
    with pytest.raises(PipelineError, match=r"old\.pt: weights do not fit.*body\.1\.deeper"):
        Checkpoint.from_dict(record, "old.pt").model("old.pt")


def test_run_files_and_manifests_are_read_in_one_place(tmp_path: Path) -> None:
    files = run_files("0123456789ab", tmp_path)
    assert (files.csv.name, files.manifest.name) == ("0123456789ab.csv", "0123456789ab.json")
    files.manifest.write_text(json.dumps({"run_id": "0123456789ab", "csv_md5": "f" * 32,
                                          "model": "airnet", "device": "cpu: x86_64"}))  # fmt: skip
    summary = read_manifest(files.manifest)
    assert (summary.model, summary.val_accuracy, summary.environment) == (
        "airnet",
        None,
        "cpu: x86_64, torch ?",
    )
    assert load_manifest("0123456789ab", folder=tmp_path) == summary
    assert load_manifest("ffffffffffff", folder=tmp_path) is None
    files.manifest.write_text("[1, 2]")
    with pytest.raises(PipelineError, match="not a run manifest"):
        read_manifest(files.manifest)
    # an unsubmitted run's manifest is latest.json, when it is that run's
    files.manifest.unlink()
    (tmp_path / "latest.json").write_text(json.dumps({"run_id": "0123456789ab", "model": "x"}))
    assert load_manifest("0123456789ab", folder=tmp_path).model == "x"
    assert load_manifest("ffffffffffff", folder=tmp_path) is None


GOOD_HISTORY_ROW = {
    "submitted_utc": "2026-11-26T00:00:00+00:00", "run_id": "abc123def456", "commit": "a" * 40,
    "csv_md5": "0" * 32, "competition": "deep-learning-spring-2025-project-1",
    "message": "run abc123def456", "kaggle_ref": "12345", "forced": "",
}  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ({"run_id": "../../../../tmp/x"}, r"line 2: run_id is not a valid run_id \(not shown"),
        ({"commit": "--output=/tmp/x"}, r"line 2: commit is not a valid commit \(not shown"),
        ({"kaggle_ref": "-1"}, r"line 2: kaggle_ref is not a valid kaggle_ref \(not shown"),
        ({"message": "x" * 5000}, "line 2: message is 5,000 characters long"),
        ({"message": "y" * 200_000}, "not a valid CSV .*field larger than field limit"),
        ("not utf-8", r"history.csv: not UTF-8 text \(byte"),
    ],
)
def test_a_history_row_that_is_not_ours_is_one_line_naming_the_field(
    tmp_path: Path, damage: dict | str, expected: str
) -> None:
    """reproduce builds a folder from run_id and runs git with commit: both are checked first."""
    from pipeline.records.history import FIELDS, append_history, read_history

    history = tmp_path / "history.csv"
    append_history(GOOD_HISTORY_ROW, history)
    assert read_history(history) == [GOOD_HISTORY_ROW]
    if damage == "not utf-8":
        history.write_bytes(history.read_bytes().replace(b"run abc", b"run \xff\xfeabc"))
    else:
        text = ",".join(FIELDS) + "\n" + ",".join((GOOD_HISTORY_ROW | damage).values()) + "\n"
        history.write_text(text)
    with pytest.raises(PipelineError, match=expected):
        read_history(history)


HUGE_CONFIG = {"name": "airnet", "max_params": 5_000_000, "widths": [2000, 4000, 4000],
               "residual": True}  # fmt: skip  # ~530 million parameters: 2 GB if ever built


def test_a_checkpoint_whose_config_is_huge_is_refused_before_anything_is_allocated(
    tmp_path: Path,
) -> None:
    """A best.pt or ensemble member saying widths in the thousands: counted, not built."""
    record = _training_record() | {"model_config": HUGE_CONFIG}
    save_checkpoint(tmp_path / "huge.pt", record)
    member = _training_record() | {"model_config": HUGE_CONFIG | {"max_params": 10**12}}
    script = (
        "import sys\n"
        "from pipeline.errors import PipelineError\n"
        "from pipeline.records.checkpoint import Checkpoint\n"
        "try:\n"
        "    Checkpoint.load(sys.argv[1]).model(sys.argv[1])\n"
        "except PipelineError as error:\n"
        "    print(error)\n"
        # this process's own peak (VmHWM, KiB): ru_maxrss would include the forked parent's
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "huge.pt")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    message, peak_mib = result.stdout.strip().splitlines()
    assert "over the budget model.max_params = 5,000,000" in message
    assert int(peak_mib) < 1200, f"peak {peak_mib} MiB: the model was built"  # torch alone ~500
    save_checkpoint(tmp_path / "member.pt", member)
    with pytest.raises(PipelineError, match=r"model_config is not valid .*model.max_params"):
        Checkpoint.load(tmp_path / "member.pt").model(tmp_path / "member.pt")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("</script><script>alert(1)</script>", "not a plain label"),
        ("[/x]", "not a plain label"),
        ("x" * 65, "not a plain label"),
        ("", "not a plain label"),
        ("nan</script>", "not a plain label"),
        (True, "a bool, not a label or a number"),
    ],
)
def test_a_plot_csv_field_that_is_not_plain_is_refused_and_the_old_file_kept(
    tmp_path: Path, value: object, problem: str
) -> None:
    path = tmp_path / "val_per_class.csv"
    write_plot_csv(path, ["class", "accuracy"], [["cat", 0.5], ["dog (1)", float("nan")]])
    before = path.read_text()
    assert before == "class,accuracy\ncat,0.5\ndog (1),nan\n"  # a diverged run's loss: plotted
    with pytest.raises(
        PipelineError, match=f"row 3, column class: {re.escape(problem)}"
    ) as refused:
        write_plot_csv(path, ["class", "accuracy"], [["cat", 0.5], [value, 0.25]])
    assert "script" not in str(refused.value) and "[/x]" not in str(refused.value)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_checkpoint_of_before_class_names_were_kept_still_loads() -> None:
    record = _training_record()
    del record["class_names"]
    assert Checkpoint.from_dict(record, "old.pt").class_names == []


def test_a_damaged_latest_json_never_hides_another_runs_manifest(tmp_path: Path) -> None:
    """latest.json changes with every run: a merge conflict there is some run's, not this one's."""
    (tmp_path / "latest.json").write_text("{broken")
    (tmp_path / "0123456789ab.json").write_text(json.dumps({"run_id": "0123456789ab"}))
    assert load_manifest("0123456789ab", folder=tmp_path).run_id == "0123456789ab"
    assert load_manifest("ffffffffffff", folder=tmp_path) is None
    # a rerun's own latest.json comes before an older submitted copy of the same run
    (tmp_path / "latest.json").write_text(json.dumps({"run_id": "0123456789ab", "device": "new"}))
    assert load_manifest("0123456789ab", folder=tmp_path, fresh=True).device == "new"
    assert load_manifest("0123456789ab", folder=tmp_path).device is None


def test_a_manifest_names_the_cpu_threads_training_used_and_reproduce_says_why_they_matter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A CPU rerun with another thread count gives other weights; reproduce called the run
    identical without a word on why the checkpoints differed, and no manifest held the count."""
    from pipeline.commands import reproduce
    from pipeline.records import manifest

    original = RunSummary.from_json({"device": "cpu: x86_64", "torch": "2.14.1",
                                     "training": {"cpu_threads": 16}})  # fmt: skip
    rerun = dataclasses.replace(original, cpu_threads=2)
    assert original.environment == "cpu: x86_64, torch 2.14.1, 16 CPU threads"
    monkeypatch.setattr(reproduce, "load_manifest", lambda *args, **kwargs: (
        original if not kwargs.get("fresh") else rerun))  # fmt: skip
    monkeypatch.setattr(reproduce, "last_run_id", lambda worktree: "0123456789ab")
    lines = reproduce.environment_reasons({"run_id": "0123456789ab", "commit": "abc"}, tmp_path)
    assert any("training used 16 CPU threads then and 2 now" in line
               and "OMP_NUM_THREADS=16" in line for line in lines), lines  # fmt: skip
    assert manifest.RunSummary.from_json({}).cpu_threads is None  # an older manifest
