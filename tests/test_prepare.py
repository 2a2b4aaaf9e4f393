"""prepare: validated arrays, the validation split, statistics and the data report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_SYNTHETIC, python2_style_pickle, write_small_custom_test

from pipeline.config.params import PrepareParams
from pipeline.data.formats import CIFAR_FOLDER
from pipeline.data.prepared import load_dataset_info, load_split
from pipeline.errors import PipelineError
from pipeline.stages import prepare


def _run(raw_dir: Path, tmp_path: Path, **params: object) -> dict:
    prepare.run(PrepareParams(**params), raw_dir, tmp_path / "prepared", tmp_path / "data.json")
    return json.loads((tmp_path / "data.json").read_text())


def test_prepare_writes_splits_statistics_and_report(synthetic_raw: Path, tmp_path: Path) -> None:
    report = _run(synthetic_raw, tmp_path)
    assert report["train_images"] == SMALL_SYNTHETIC.train_images
    assert report["val_images"] == SMALL_SYNTHETIC.val_images
    assert report["custom_test_images"] == SMALL_SYNTHETIC.custom_test_images
    assert set(report) == {"train_images", "val_images", "custom_test_images"}  # one short row
    info = load_dataset_info(tmp_path / "prepared")
    assert info["train_per_class"]["airplane"] == SMALL_SYNTHETIC.train_images // 10
    train = load_split(tmp_path / "prepared", "train")
    assert train["images"].shape == (200, 32, 32, 3) and train["images"].dtype == np.uint8
    info = load_dataset_info(tmp_path / "prepared")
    expected_mean = (train["images"].reshape(-1, 3) / 255.0).mean(0)
    np.testing.assert_allclose(info["mean"], expected_mean, rtol=1e-6)
    custom = load_split(tmp_path / "prepared", "custom_test")
    np.testing.assert_array_equal(custom["ids"], np.arange(SMALL_SYNTHETIC.custom_test_images))


def test_holdout_is_stratified_and_disjoint_from_training(
    synthetic_raw: Path, tmp_path: Path
) -> None:
    report = _run(synthetic_raw, tmp_path, val="holdout", holdout_images=50)
    assert report["val_images"] == 50 and report["train_images"] == 150
    assert set(load_dataset_info(tmp_path / "prepared")["val_per_class"].values()) == {5}
    train = load_split(tmp_path / "prepared", "train")["images"].reshape(150, -1)
    val = load_split(tmp_path / "prepared", "val")["images"].reshape(50, -1)
    assert not {row.tobytes() for row in train} & {row.tobytes() for row in val}


def test_holdout_larger_than_a_class_is_refused(synthetic_raw: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="prepare.holdout_images=500"):
        _run(synthetic_raw, tmp_path, val="holdout", holdout_images=500)


def test_2024_custom_test_layout_goes_through_prepare(synthetic_raw: Path, tmp_path: Path) -> None:
    (synthetic_raw / "cifar_test_nolabel.pkl").unlink()
    images, _ = write_small_custom_test(
        synthetic_raw / "cifar_test_nolabels.pkl", count=25, layout="2024"
    )
    report = _run(synthetic_raw, tmp_path)
    assert report["custom_test_images"] == 25
    np.testing.assert_array_equal(
        load_split(tmp_path / "prepared", "custom_test")["images"], images
    )


def test_class_names_out_of_cifar_order_are_refused(synthetic_raw: Path, tmp_path: Path) -> None:
    names = [
        b"cat",
        b"airplane",
        b"automobile",
        b"bird",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    (synthetic_raw / CIFAR_FOLDER / "batches.meta").write_bytes(
        python2_style_pickle({b"label_names": names})
    )
    with pytest.raises(PipelineError, match="class names must be CIFAR-10's in order"):
        _run(synthetic_raw, tmp_path)


def test_a_bad_batch_leaves_no_prepared_output(synthetic_raw: Path, tmp_path: Path) -> None:
    (synthetic_raw / CIFAR_FOLDER / "data_batch_4").write_bytes(b"\x80\x02}q\x00")  # cut short
    with pytest.raises(PipelineError, match="data_batch_4: pickle is truncated"):
        _run(synthetic_raw, tmp_path)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
