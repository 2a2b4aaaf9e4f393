"""params.yaml → frozen dataclasses; every mistake names its key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from pipeline.config.load import (
    load_params,
    load_profile,
    params_from_dict,
    parse_overrides,
    profile_names,
    profile_values,
    with_overrides,
)
from pipeline.config.params import MODEL_KEYS, SCHEDULE_KEYS, Params, conditional_keys
from pipeline.errors import PipelineError


def test_repository_params_load_and_hold_the_default_profile() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    model, train = params.model, params.train
    assert (model.name, model.widths, model.residual) == ("airnet", [128, 304, 304], True)
    assert model.max_params == 5_000_000
    assert (train.schedule, train.flip, train.augment_policy) == (
        "onecycle",
        "alternating",
        "trivial",
    )
    assert (train.epochs, train.batch_size, train.ema_decay) == (200, 512, 0.999)
    assert params.predict.tta == "auto"
    assert params.select.tta_policies == ["none", "flip", "flip_translate"]
    assert params.data.competition == "deep-learning-spring-2025-project-1"


def test_the_seed_profile_holds_the_seed_recipe() -> None:
    from pipeline.config.load import load_profile

    train = load_profile("seed").train
    assert (train.lr, train.momentum, train.weight_decay, train.batch_size, train.epochs) == (
        0.09,
        0.9,
        3e-4,
        128,
        200,
    )
    assert (train.schedule, train.milestones, train.gamma) == ("multistep", [90, 180], 0.1)
    assert (train.crop_padding, train.pad_mode, train.flip) == (4, "zeros", "random")
    assert load_profile("seed").model.name == "seed_resnet"


def test_params_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Params().train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"data": {"synthetic": {"train_imgs": 5}}}, "unknown key 'data.synthetic.train_imgs'"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer, found 'ten'"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
        ({"train": {"epochs": -1}}, r"train.epochs must be in \[1, 10,000\], found -1"),
        ({"train": {"epochs": 10**30}}, r"train.epochs must be in \[1, 10,000\]"),
        ({"train": {"lr": float("inf")}}, "train.lr must be a finite number, found inf"),
        ({"train": {"lr": float("nan")}}, "train.lr must be a finite number, found nan"),
        ({"train": {"momentum": 10**400}}, "train.momentum must be a finite number"),
        ({"train": {"seed": -1}}, r"train.seed must be in \[0, 2\^32\), found -1"),
        ({"prepare": {"seed": 2**32}}, r"prepare.seed must be in \[0, 2\^32\)"),
        ({"data": {"synthetic": {"seed": 2**40}}}, r"data.synthetic.seed must be in \[0, 2\^32\)"),
        ({"train": {"batch_size": 10**12}}, "train.batch_size must be in"),
        ({"model": {"max_params": 10**12}}, "model.max_params must be in"),
        (
            {"data": {"synthetic": {"train_images": 10**9}}},
            "data.synthetic.train_images must be in",
        ),
        ({"train": {"lr": "fast"}}, "train.lr must be a number"),
        (
            {"train": {"flip": True}},
            r"train.flip must be one of \['none', 'random', 'alternating'\]",
        ),
        ({"train": {"nesterov": "yes"}}, "train.nesterov must be true or false"),
        (
            {"train": {"compile": True}},
            r"train.compile must be one of \['auto', 'always', 'never'\]",
        ),
        ({"train": {"max_steps": -1}}, r"train.max_steps must be in \[0, "),
        ({"train": {"ema_decay": 1.0}}, r"train.ema_decay must be in \[0, 1\)"),
        ({"model": {"widths": [64, 256]}}, "model.widths must be three channel counts"),
        ({"model": {"widths": [10000, 20000, 20000]}}, "model.widths must be three channel counts"),
        (
            {"model": {"name": "resnet_wide", "blocks": [2, 2]}},
            "model.blocks must be one block count per width",
        ),
        ({"train": {"milestones": [90, "x"]}}, r"train.milestones\[1\] must be an integer"),
        ({"data": {"source": "ftp"}}, "data.source must be one of"),
        ({"predict": {"tta": "all"}}, "predict.tta must be one of"),
        ({"select": {"tta_policies": []}}, "select.tta_policies must be a non-empty list"),
        (
            {"select": {"tta_policies": ["flip", "ten_crop"]}},
            r"select.tta_policies\[1\] must be one of",
        ),
        ({"model": {"blocks": []}}, "model.blocks must be 1 to 8 block counts"),
        ({"train": []}, "train must be a mapping"),
        (
            {"train": {"low_res_pixels": 12, "low_res_fraction": 0.5}},
            r"train.low_res_pixels must be 0 or in \[16, 31\], found 12",
        ),
        (
            {"train": {"low_res_pixels": 32, "low_res_fraction": 0.5}},
            r"train.low_res_pixels must be 0 or in \[16, 31\], found 32",
        ),
        (
            {"train": {"low_res_pixels": 24, "low_res_fraction": 1.0}},
            r"train.low_res_fraction must be in \[0, 1\)",
        ),
        (
            {"train": {"low_res_pixels": 24}},
            "train.low_res_pixels 24 with train.low_res_fraction 0.0",
        ),
        (
            {"train": {"low_res_fraction": 0.5}},
            "train.low_res_pixels 0 with train.low_res_fraction 0.5",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_key(values: dict, expected: str) -> None:
    with pytest.raises(PipelineError, match=expected):
        params_from_dict(values)


def test_ints_are_accepted_for_floats_and_sections_default() -> None:
    params = params_from_dict({"train": {"lr": 1}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.predict.tta == "auto"


def test_params_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [\n")
    with pytest.raises(PipelineError, match=r"params.yaml: not valid YAML"):
        load_params(path)
    path.write_text("train:\n  bogus: 1\n")
    with pytest.raises(PipelineError, match=r"params.yaml: params: unknown key 'train.bogus'"):
        load_params(path)
    with pytest.raises(PipelineError, match="file not found"):
        load_params(tmp_path / "missing.yaml")


def test_a_key_given_twice_is_refused_since_dvc_would_read_the_other_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.5\n")
    with pytest.raises(PipelineError, match=r"params.yaml: not valid YAML.*'lr' appears twice"):
        load_params(path)
    path.write_text("train:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    with pytest.raises(PipelineError, match="'train' appears twice"):
        load_params(path)


@pytest.mark.parametrize("damage", ["not utf-8", "a folder", "unreadable"])
def test_a_params_file_that_cannot_be_read_is_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "params.yaml"
    if damage == "not utf-8":
        path.write_bytes(b"train:\n  lr: 0.1 # \xff\xfe\n")
    elif damage == "a folder":
        path.mkdir()
    else:
        path.write_text("train: {}\n")
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything
            pytest.skip("running as root: a file cannot be made unreadable")
    with pytest.raises(PipelineError, match=r"params.yaml: (not UTF-8|cannot be read)"):
        load_params(path)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"model": {"dropout": 0.1}}, "model.dropout is not read by model.name 'airnet'"),
        ({"model": {"base_width": 32}}, "model.base_width is not read by model.name 'airnet'"),
        (
            {"train": {"milestones": [90]}},
            "train.milestones is not read by train.schedule 'onecycle'",
        ),
        (
            {"train": {"schedule": "cosine", "gamma": 0.1}},
            "train.gamma is not read by train.schedule 'cosine'",
        ),
        (
            {"model": {"name": "seed_resnet", "base_width": 32, "blocks": [4, 4, 3]}},
            "model.dropout is missing: model.name 'seed_resnet' reads it",
        ),
        ({"train": {"schedule": "multistep"}}, "train.gamma, train.milestones are missing"),
    ],
)
def test_a_key_the_chosen_model_or_schedule_ignores_is_refused(values: dict, expected: str) -> None:
    # editing it would change dvc.lock and the resume key, and retrain for nothing
    with pytest.raises(PipelineError, match=expected):
        params_from_dict(values)


def test_recipe_defaults_are_the_default_profile_and_nothing_else() -> None:
    default = load_profile("default")
    assert Params().model == default.model and Params().train == default.train
    partial = params_from_dict({"train": {"lr": 0.5}})
    assert partial.train == dataclasses.replace(default.train, lr=0.5)
    # another model takes only the default keys it reads: airnet's widths, not its residual
    wide = params_from_dict({"model": {"name": "resnet_wide", "blocks": [1, 1, 1], "dropout": 0.0}})
    assert wide.model.widths == default.model.widths and wide.model.residual is None


def test_every_profile_sets_exactly_the_keys_its_model_and_schedule_read() -> None:
    for name in profile_names():
        values = profile_values(name)  # refuses a missing key: nothing is filled in for profiles
        model_reads = set(MODEL_KEYS[values["model"]["name"]])
        schedule_reads = set(SCHEDULE_KEYS[values["train"]["schedule"]])
        assert conditional_keys(MODEL_KEYS) & set(values["model"]) == model_reads, name
        assert conditional_keys(SCHEDULE_KEYS) & set(values["train"]) == schedule_reads, name


def test_a_profile_missing_a_key_is_refused(tmp_path: Path) -> None:
    text = (REPO_ROOT / "profiles/default.yaml").read_text().replace("  lr: 0.75", "  # lr")
    (tmp_path / "partial.yaml").write_text(text)
    with pytest.raises(PipelineError, match=r"partial.yaml: params: train.lr is missing"):
        profile_values("partial", tmp_path)


def test_params_yaml_other_sections_are_the_dataclass_defaults() -> None:
    # their one set of defaults is the dataclasses'; the shipped params.yaml shows them unchanged
    shipped = load_params(REPO_ROOT / "params.yaml")
    for section in ("data", "prepare", "select", "predict"):
        assert getattr(shipped, section) == getattr(Params(), section), section


def test_overrides_switching_the_schedule_drop_the_old_schedules_keys() -> None:
    seed = profile_values("seed")
    cosine = params_from_dict(with_overrides(seed, {"train": {"schedule": "cosine", "epochs": 3}}))
    assert (cosine.train.milestones, cosine.train.gamma, cosine.train.epochs) == (None, None, 3)
    assert seed["train"]["schedule"] == "multistep"  # the base is not changed
    with pytest.raises(PipelineError, match="train.gamma is not read"):  # set by hand: refused
        params_from_dict(with_overrides(seed, {"train": {"schedule": "cosine", "gamma": 0.5}}))
    assert parse_overrides(["train.lr=0.1", "model.widths=[8, 16, 16]"]) == {
        "train": {"lr": 0.1},
        "model": {"widths": [8, 16, 16]},
    }
    with pytest.raises(PipelineError, match="expected SECTION.KEY=VALUE"):
        parse_overrides(["lr=0.1"])


def test_switching_the_model_by_hand_names_every_key_to_change_at_once() -> None:
    with pytest.raises(PipelineError) as refused:
        params_from_dict({"model": {"name": "seed_resnet"}})  # airnet's widths and residual stay
    message = str(refused.value)
    assert "model.base_width, model.blocks, model.dropout are missing" in message
    assert "not read" not in message  # the default profile's airnet keys are not carried over
    with pytest.raises(
        PipelineError, match=r"model.widths is not read by .*; and model.base_width"
    ):
        params_from_dict({"model": {"name": "seed_resnet", "widths": [8, 16, 16]}})


def test_select_and_predict_have_their_own_device() -> None:
    params = params_from_dict({"select": {"device": "cpu"}, "predict": {"device": "cuda"}})
    assert (params.select.device, params.predict.device, params.train.device) == (
        "cpu",
        "cuda",
        "auto",
    )
    with pytest.raises(PipelineError, match="select.device must be one of"):
        params_from_dict({"select": {"device": "tpu"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data:\n  ? [a, b]\n  : 1\n", "a key must be a plain value, found list"),
        ("data: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
)
def test_yaml_that_breaks_the_parser_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=f"params.yaml: not valid YAML.*{expected}"):
        load_params(path)


def test_an_override_that_is_not_yaml_is_one_line_naming_it() -> None:
    from pipeline.config.load import parse_overrides

    with pytest.raises(PipelineError, match=r"override 'train.lr=\[0.1': not valid YAML"):
        parse_overrides(["train.lr=[0.1"])
