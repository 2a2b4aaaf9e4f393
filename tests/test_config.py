"""params.yaml → frozen dataclasses; every mistake names its key."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from pipeline.config.load import (
    load_params,
    load_profile,
    params_from_dict,
    parse_overrides,
    profile_names,
    profile_values,
    recipe,
    with_overrides,
)
from pipeline.config.params import Params
from pipeline.config.train_params import SCHEDULE_DEFAULTS, default_milestones
from pipeline.errors import PipelineError
from pipeline.models.registry import registered_models


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
        (
            {"train": {"schedule": "multistep", "milestones": [90, "x"]}},
            r"train.milestones\[1\] must be an integer",
        ),
        ({"data": {"source": "ftp"}}, "data.source must be one of"),
        ({"predict": {"tta": "all"}}, "predict.tta must be one of"),
        ({"select": {"tta_policies": []}}, "select.tta_policies must be a non-empty list"),
        (
            {"select": {"tta_policies": ["flip", "ten_crop"]}},
            r"select.tta_policies\[1\] must be one of",
        ),
        (
            {"model": {"name": "seed_resnet", "blocks": []}},
            "model.blocks must be 1 to 8 block counts",
        ),
        ({"train": []}, "train must be a mapping"),
        (  # each share finite, their sum not: the balancing divided by infinity
            {"adapt": {"prior": [1e308] * 10}},
            r"adapt.prior must be \[\] \(uniform\) or ten positive class shares with a finite sum",
        ),
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
        (  # a lone key of another variant is a mistake, not what a switch left behind
            {"model": {"name": "seed_resnet", "residual": True}},
            "model.residual is not read by model.name 'seed_resnet'",
        ),
        (
            {"train": {"optimizer": "sgd", "muon_lr": 0.2}},
            "train.muon_lr is not read by train.optimizer 'sgd'",
        ),
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
    # another model takes its own defaults for the keys it reads, none of airnet's
    wide = params_from_dict({"model": {"name": "resnet_wide", "blocks": [1, 1, 1]}})
    assert wide.model.widths == registered_models()["resnet_wide"].own_defaults()["widths"]
    assert wide.model.blocks == [1, 1, 1] and not hasattr(wide.model, "residual")


SHIPPED = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _airnet_keys_dropped_for(name: str) -> str:
    """The shipped airnet keys a switch to model `name` drops, as the warning lists them (from
    the registry: a key added to airnet needs no edit here)."""
    models = registered_models()
    keys = sorted(set(models["airnet"].own_defaults()) - set(models[name].own_defaults()))
    readers = {k: " and ".join(n for n, m in models.items() if k in m.own_defaults()) for k in keys}
    return ", ".join(f"model.{key} ({readers[key]}'s)" for key in keys)


@pytest.mark.parametrize(
    ("switch", "dropped", "filled"),
    [
        (
            {"model": {"name": "seed_resnet"}},
            # model.residual (airnet's), …, model.widths (airnet and resnet_wide's)
            _airnet_keys_dropped_for("seed_resnet") + " are not read by model.name 'seed_resnet'",
            "model.base_width=32, model.blocks=[4, 4, 3], model.dropout=0.17",
        ),
        (
            {"model": {"name": "resnet_wide"}},
            _airnet_keys_dropped_for("resnet_wide") + " are not read by model.name 'resnet_wide': "
            "ignored (left by a switch? delete them from params.yaml); model.widths "
            "[128, 304, 304] is kept (the default for resnet_wide: [64, 128, 256])",
            "model.blocks=[2, 2, 2], model.dropout=0.0",
        ),
        (
            {"train": {"schedule": "multistep", "epochs": 30}},
            "train.lr_end_factor (onecycle's), train.lr_start_factor (onecycle's), "
            "train.warmup_fraction (onecycle's) are not read by train.schedule 'multistep'",
            "train.milestones=[14, 27], train.gamma=0.1",
        ),
        (
            {"train": {"schedule": "cosine"}},
            "train.lr_end_factor (onecycle's), train.lr_start_factor (onecycle's), "
            "train.warmup_fraction (onecycle's) are not read by train.schedule 'cosine'",
            None,
        ),
        (  # back again: the milestones alone (gamma came from the defaults) are dropped too
            {"train": {"schedule": "onecycle", "milestones": [90, 150]}},
            "train.milestones (multistep's) is not read by train.schedule 'onecycle'",
            None,
        ),
        ({"train": {"optimizer": "muon"}}, None, "train.muon_lr=0.24, train.muon_momentum=0.6"),
    ],
)
def test_dvc_exp_run_s_switches_a_variant_in_params_yaml(
    switch: dict, dropped: str | None, filled: str | None
) -> None:
    """`dvc exp run -S model.name=seed_resnet` writes just that key into params.yaml, whose
    airnet keys stay: they are dropped with a note, and seed_resnet's come from its defaults."""
    values = copy.deepcopy(SHIPPED)
    for section, keys in switch.items():
        values[section].update(keys)
    notes: list[str] = []
    params = params_from_dict(values, notes)
    expected = []
    if dropped:
        suffix = ": ignored (left by a switch? delete them from params.yaml)"
        expected.append(f"warning: params: {dropped}" + ("" if suffix in dropped else suffix))
    if filled:
        expected.append(f"params: not in params.yaml, so the chosen variant's defaults: {filled}")
    assert notes == expected
    if switch.get("model", {}).get("name") == "seed_resnet":
        assert params.model == load_profile("seed").model
    # the shipped params.yaml itself: no note
    params_from_dict(copy.deepcopy(SHIPPED), notes := [])
    assert notes == []


def test_each_variants_defaults_are_the_profile_that_uses_it() -> None:
    seed, default = load_profile("seed"), load_profile("default")
    assert profile_values("seed")["model"] == {"name": "seed_resnet"}  # its model's defaults
    own = registered_models()["seed_resnet"].own_defaults()
    assert {key: getattr(seed.model, key) for key in own} == own
    # the default profile writes out the defaults in code (a key added later may be left out:
    # it takes its default, and `profile` writes it anyway)
    written, defaults = profile_values("default"), dataclasses.asdict(Params())
    for section in ("model", "train"):
        assert written[section] == {k: defaults[section][k] for k in written[section]}, section
    onecycle = {k: getattr(default.train, k) for k in SCHEDULE_DEFAULTS["onecycle"]}
    assert onecycle == SCHEDULE_DEFAULTS["onecycle"]
    assert seed.train.gamma == SCHEDULE_DEFAULTS["multistep"]["gamma"]
    assert default_milestones(seed.train.epochs) == seed.train.milestones
    assert default_milestones(2) == [1] and default_milestones(1) == [1]


def test_an_unknown_key_names_the_closest_one() -> None:
    with pytest.raises(
        PipelineError, match=r"^params: unknown key 'train.epoch'; did you mean 'train.epochs'\?$"
    ):
        params_from_dict({"train": {"epoch": 5}})
    with pytest.raises(
        PipelineError, match=r"unknown key 'train.zzz' \(known under 'train': .*epochs"
    ):
        params_from_dict({"train": {"zzz": 5}})


def test_every_profile_sets_only_keys_its_model_and_schedule_read(tmp_path: Path) -> None:
    for name in profile_names():
        values = profile_values(name)  # what differs from the defaults
        model = registered_models()[values["model"].get("name", "airnet")]
        assert set(values["model"]) <= {"name", "max_params", *model.own_defaults()}, name
    text = (REPO_ROOT / "profiles/fast.yaml").read_text()
    (tmp_path / "slip.yaml").write_text(text.replace("train:", "train:\n  gamma: 0.5", 1))
    with pytest.raises(PipelineError, match=r"slip.yaml: params: train.gamma is not read"):
        profile_values("slip", tmp_path)


def test_a_profile_leaves_out_what_it_does_not_change(tmp_path: Path) -> None:
    (tmp_path / "short.yaml").write_text("train:\n  epochs: 3\n")
    params = load_profile("short", tmp_path)
    assert params.train == dataclasses.replace(Params().train, epochs=3)
    assert params.model == Params().model


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


def test_switching_the_model_by_hand_takes_its_defaults_and_refuses_a_lone_wrong_key() -> None:
    params = params_from_dict({"model": {"name": "seed_resnet"}})
    assert params.model == load_profile("seed").model  # the default profile's airnet keys go
    with pytest.raises(
        PipelineError, match=r"^params: model.widths is not read by model.name 'seed_resnet'"
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
        # a plain scalar or a tag whose value the reader cannot build
        ("data:\n  path: 2025-02-30\n", r"a value cannot be read \(ValueError: day is out"),
        ("train:\n  seed: !!int ''\n", r"a value cannot be read \(IndexError"),
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


def test_milestones_past_the_last_epoch_are_refused_with_a_fix_that_works() -> None:
    """The seed profile with `-S train.epochs=2` kept milestones [90, 180]: the lr never decayed."""
    from pipeline.engine.schedule import check_milestones

    short = recipe("seed", {"train": {"epochs": 2}}).train
    with pytest.raises(PipelineError) as refused:
        check_milestones(short)
    message = str(refused.value)
    assert message.startswith(
        "params: train.milestones [90, 180] lie at or past the last epoch (train.epochs 2, "
        "counted from 0): the lr would never decay at [90, 180]; set them inside the run"
    )
    fix = re.search(r"-S '(train\.milestones=[^']+)'", message).group(1)
    fixed = recipe("seed", with_overrides({"train": {"epochs": 2}}, parse_overrides([fix]))).train
    check_milestones(fixed)  # as printed, it runs
    assert fixed.milestones == [1]
    check_milestones(load_profile("seed").train)  # 200 epochs: [90, 180] act
    check_milestones(recipe("seed", {"train": {"epochs": 181}}).train)
    with pytest.raises(PipelineError, match=r"decay at \[180\]"):
        check_milestones(recipe("seed", {"train": {"epochs": 180}}).train)
    with pytest.raises(
        PipelineError, match="a 1-epoch run has no epoch to decay in: -S train.schedule=constant"
    ):
        check_milestones(recipe("seed", {"train": {"epochs": 1}}).train)
    check_milestones(
        recipe(
            "seed",
            with_overrides({"train": {"epochs": 1}}, parse_overrides(["train.schedule=constant"])),
        ).train
    )


def test_a_key_dvc_yaml_declares_by_name_must_be_written(tmp_path: Path) -> None:
    """select declares model.max_params: DVC stops without it, default or not; say so first."""
    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  name: seed_resnet\n")
    with pytest.raises(PipelineError, match=r"params.yaml: model.max_params is missing: dvc.yaml's "
                       r"select stage declares it.*write `max_params: 5000000` under `model:`"):  # fmt: skip
        load_params(path)
    path.write_text("model:\n  name: seed_resnet\n  max_params: 5000000\n")
    assert load_params(path).model.name == "seed_resnet"


def test_params_are_read_as_dvc_reads_them(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) trained `seed: 010` with seed 8 while dvc.lock recorded 10, and refused
    `lr: 1e-3` as a string that DVC reads as a number: one reading (DVC's) for both."""
    from dvc.utils.serialize import parse_yaml as dvc_reads

    text = "train:\n  seed: 010\n  lr: 1e-3\n  schedule: multistep\n  milestones: [0x10]\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    train = load_params(path).train
    assert dvc_reads(text, str(path))["train"] == {
        "seed": 10, "lr": 0.001, "schedule": "multistep", "milestones": [16]
    }  # fmt: skip
    assert (train.seed, train.lr, train.milestones) == (10, 0.001, [16])
    path.write_text("train:\n  nesterov: yes\n")  # YAML 1.2 (and DVC): the string 'yes'
    with pytest.raises(PipelineError, match="train.nesterov must be true or false, found 'yes'"):
        load_params(path)


def test_a_long_value_is_written_on_one_line() -> None:
    """The flow writer wrapped values over ~80 characters onto lines `profile` never edits."""
    from pipeline.config.yaml_files import flow_yaml, parse_yaml

    written = flow_yaml(list(range(60)))
    assert "\n" not in written and parse_yaml(f"a: {written}") == {"a": list(range(60))}
