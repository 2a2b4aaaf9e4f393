"""Models by name, and the 5,000,000-parameter budget."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import seed_model

from pipeline.engine.models import build_model, count_trainable_params
from pipeline.errors import PipelineError


def test_seed_resnet_has_exactly_the_seed_teams_parameter_count() -> None:
    model = build_model(seed_model())
    assert count_trainable_params(model) == 1_177_130


def test_seed_resnet_structure_matches_the_seed() -> None:
    model = build_model(seed_model())
    blocks = list(model.stages)
    assert len(blocks) == 11
    widths = [block.residual[0].out_channels for block in blocks]
    assert widths == [32] * 4 + [64] * 4 + [128] * 3
    dropouts = [m.p for m in blocks[0].residual if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.17, 0.17]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_over_budget_model_fails_before_training_with_count_and_limit() -> None:
    with pytest.raises(
        PipelineError,
        match=r"has 5,9\d\d,\d{3} trainable parameters, over the budget model.max_params = 5,000,000",
    ):
        build_model(seed_model(base_width=72))


def test_budget_is_a_param() -> None:
    with pytest.raises(PipelineError, match="over the budget model.max_params = 1,000,000"):
        build_model(seed_model(max_params=1_000_000))


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(
        PipelineError, match=r"model.name must be one of \['airnet', 'resnet_wide', 'seed_resnet'\]"
    ):
        build_model(seed_model(name="resnet9000"))


def _modules_torch_refuses_when_deterministic() -> set[type]:
    """The torch.nn classes that `torch.use_deterministic_algorithms(True)` makes throw (their
    CUDA backward has no deterministic kernel), read from torch's own documentation of it."""
    doc = torch.use_deterministic_algorithms.__doc__ or ""
    section = doc[doc.index("operations will throw a") :]
    section = section[: section.index("In addition, several operations")]  # the next paragraph
    names = re.findall(r":class:`torch\.nn\.(\w+)`", section)
    return {getattr(torch.nn, name) for name in names if hasattr(torch.nn, name)}


@pytest.mark.parametrize("profile", ["default", "fast", "seed", "cpu", "resnet_wide"])
def test_no_model_uses_a_module_that_train_deterministic_would_refuse(profile: str) -> None:
    from pipeline.config.load import load_profile

    refused = _modules_torch_refuses_when_deterministic()
    assert torch.nn.AdaptiveAvgPool2d in refused and len(refused) >= 5  # the list was read
    if profile == "resnet_wide":
        model = build_model(seed_model(name="resnet_wide", widths=[16, 32, 64], blocks=[1, 1, 1]))
    else:
        model = build_model(load_profile(profile).model)
    used = {type(module) for module in model.modules()}
    assert not [kind.__name__ for kind in used if issubclass(kind, tuple(refused))]
