"""The fast trainer's parts: every model trains, whitening whitens, EMA follows, compile is faithful."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seed_model, seed_train

from pipeline.config.load import load_profile
from pipeline.config.params import TrainParams
from pipeline.data.synthetic import make_images
from pipeline.engine import gpu, optim, schedule
from pipeline.engine.device import FLOAT32, choose_precision
from pipeline.engine.loop import EpochStats, fit
from pipeline.engine.models import build_model, count_trainable_params
from pipeline.engine.normalise import to_device_set
from pipeline.engine.optim import make_optimizer, uses_compile
from pipeline.errors import PipelineError
from pipeline.models.airnet import AirNet, GlobalMaxPool
from pipeline.models.registry import is_residual

MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]
SMALL_MODELS = {
    "seed_resnet": seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0),
    "airnet": seed_model(name="airnet", widths=[8, 16, 16], residual=False, whiten_bias_epochs=0),
    "airnet residual": seed_model(
        name="airnet", widths=[8, 16, 16], residual=True, whiten_bias_epochs=0
    ),
    "airnet deeper": seed_model(
        name="airnet", widths=[8, 16, 16], residual=True, whiten_bias_epochs=0, residual_convs=2
    ),
    "resnet_wide": seed_model(name="resnet_wide", widths=[8, 16, 32], blocks=[1, 1, 1]),
}


def synthetic_set(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10)
    return to_device_set(make_images(labels, rng), labels, MEAN, STD, torch.device("cpu"))


def train_a_little(model: torch.nn.Module, params: TrainParams) -> tuple[list[EpochStats], object]:
    train_set, val_set = synthetic_set(200, 0), synthetic_set(50, 1)
    if isinstance(model, AirNet):
        model.init_whitening(train_set[0])
    history: list[EpochStats] = []
    ema = fit(model, params, train_set, val_set, (MEAN, STD), lambda s, _: history.append(s))
    return history, ema


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_a_few_steps_lower_the_loss_for_every_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODELS[name])
    recipe = load_profile("fast").train if name.startswith("airnet") else seed_train()
    params = dataclasses.replace(
        recipe, device="cpu", epochs=6, batch_size=50, lr=recipe.lr / 10 if name.startswith("airnet") else 0.05
    )  # fmt: skip
    history, _ = train_a_little(model, params)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy > 0.2  # chance is 0.1


def test_default_and_fast_profiles_have_the_documented_models() -> None:
    counts = {name: count_trainable_params(build_model(load_profile(name).model)) for name in
              ("fast", "default", "seed", "cpu")}  # fmt: skip
    assert counts == {"fast": 1_971_328, "default": 4_836_736, "seed": 1_177_130, "cpu": 497_216}
    assert all(count <= 5_000_000 for count in counts.values())
    assert is_residual(load_profile("default").model) and is_residual(load_profile("seed").model)
    assert not is_residual(load_profile("fast").model)


def test_residual_convs_add_one_identity_initialised_residual_conv_per_group_each() -> None:
    """model.residual_convs: each extra unit adds a w×w conv and a BN shift per group, is added
    to the group's output in turn, and keeps the one-unit net's state-dict names (checkpoints
    of the residual airnet saved before the key existed load into residual_convs: 1)."""
    counts = [
        count_trainable_params(
            AirNet([8, 16, 16], residual=convs > 0, residual_convs=max(convs, 1))
        )
        for convs in (0, 1, 2, 3)
    ]
    unit = sum(9 * width * width + width for width in (8, 16, 16))  # conv weights + BN shift
    assert [b - a for a, b in zip(counts, counts[1:], strict=False)] == [unit] * 3
    one = AirNet([8, 16, 16], residual=True).state_dict()
    assert any(".extra." in key for key in one) and not any("deeper" in key for key in one)
    deeper = AirNet([8, 16, 16], residual=True, residual_convs=3)
    assert set(one) < set(deeper.state_dict())  # the first unit under the same names
    group = deeper.body[1]
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        expected = group.body(x)
        for unit_module in [group.extra, *group.deeper]:
            expected = expected + unit_module(expected)
        assert torch.equal(group(x), expected)
    assert deeper(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # a default-sized deeper net fits the budget: four convs per group at widths 128/256/256
    wide = seed_model(name="airnet", widths=[128, 256, 256], residual=True, residual_convs=2)
    assert count_trainable_params(build_model(wide)) == 4_898_816
    with pytest.raises(PipelineError, match=r"model\.residual_convs.*unless model\.residual"):
        seed_model(name="airnet", widths=[8, 16, 16], residual=False, residual_convs=2)
    with pytest.raises(PipelineError, match=r"model\.residual_convs.*in \[1, 16\]"):
        seed_model(name="airnet", widths=[8, 16, 16], residual=True, residual_convs=0)


def test_the_loop_prints_the_estimate_that_counts_low_resolution_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train_epoch's CPU warning comes from estimated_run_seconds, given the trainer's
    low-resolution and total steps (not the first steps' pace times the step count)."""
    from pipeline.engine import cpu_estimate

    seen = []

    def estimate(probe_seconds: float, trainer: object) -> float:
        seen.append((trainer.low_res_steps, trainer.run_steps))
        return 60 * 1234.5  # seconds

    monkeypatch.setattr(cpu_estimate, "estimated_run_seconds", estimate)
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=1, batch_size=50, lr=0.15,
        low_res_pixels=16, low_res_fraction=0.5,
    )  # fmt: skip
    train_a_little(build_model(SMALL_MODELS["airnet"]), params)  # 200 images: 4 steps
    assert seen == [(2, 4)]
    assert "estimated 1234.5 min for 4 steps" in capsys.readouterr().err  # the console: stderr


def test_resnet_wide_is_wrn_16_4_at_its_documented_size() -> None:
    model = build_model(seed_model(name="resnet_wide", widths=[64, 128, 256], blocks=[2, 2, 2]))
    assert count_trainable_params(model) == 2_776_906
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(Exception, match="over the budget"):
        build_model(seed_model(name="resnet_wide", widths=[96, 192, 384], blocks=[2, 2, 2]))


def test_whitening_layer_decorrelates_image_patches() -> None:
    images, _ = synthetic_set(300, 2)
    model = AirNet([8, 16, 16], residual=False)
    model.init_whitening(images[:200])
    with torch.no_grad():
        outputs = model.whiten(images[200:])  # held-out images: (N, 24, 31, 31)
    channels = outputs[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = torch.cov(channels.T)
    off_diagonal = covariance - torch.diag(torch.diag(covariance))
    assert off_diagonal.abs().max() < 0.1  # raw patches: neighbouring pixels correlate ~0.9
    raw = images[200:].unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert torch.corrcoef(raw.T.double())[0, 1] > 0.5
    assert torch.equal(outputs[:, 12:], -outputs[:, :12])  # the negated copies
    assert not model.whiten.weight.requires_grad


def test_airnet_convs_start_as_the_identity_on_their_first_channels() -> None:
    conv = AirNet([8, 16, 16], residual=False).body[1].body[0]  # group 1's first conv: 24 → 8
    x = torch.randn(1, 24, 9, 9)
    with torch.no_grad():
        assert torch.allclose(conv(x)[:, :8], x[:, :8])


def test_bias_and_batchnorm_params_get_the_scaled_lr_and_the_same_decay_per_step() -> None:
    model = build_model(SMALL_MODELS["seed_resnet"])
    optimizer = make_optimizer(model, seed_train(lr=0.5, weight_decay=0.01, bias_lr_scale=8.0))
    matrices, vectors = optimizer.param_groups
    assert all(p.ndim > 1 for p in matrices["params"]) and all(
        p.ndim == 1 for p in vectors["params"]
    )
    assert (matrices["lr"], vectors["lr"]) == (0.5, 4.0)
    assert matrices["lr"] * matrices["weight_decay"] == pytest.approx(
        vectors["lr"] * vectors["weight_decay"]
    )


def test_ema_follows_the_weights_and_checkpointable_state_differs_from_raw() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODELS["airnet"])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=2, batch_size=50, lr=0.15, ema_decay=0.9
    )
    history, ema = train_a_little(model, params)
    assert ema is not None and all(stats.val_accuracy_ema is not None for stats in history)
    name = "body.1.body.0.weight"
    raw, averaged, start = model.state_dict()[name], ema.state_dict()[name], initial[name]
    assert not torch.equal(averaged, raw) and not torch.equal(averaged, start)
    # an average of the path: closer to the end than the start is, but not at the end
    assert (averaged - raw).norm() < (start - raw).norm()


def test_without_ema_fit_returns_none_and_logs_no_ema_accuracy() -> None:
    model = build_model(SMALL_MODELS["seed_resnet"])
    history, ema = train_a_little(model, seed_train(device="cpu", epochs=1, batch_size=50, lr=0.05))
    assert ema is None and history[0].val_accuracy_ema is None


def test_compile_is_on_for_a_triton_gpu_only_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_device import machine_with

    monkeypatch.setattr(gpu, "this_machine", lambda: machine_with("NVIDIA H100", (9, 0)))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_compile(seed_train(compile="auto"), cpu) and uses_compile(seed_train(), cuda)
    assert uses_compile(seed_train(compile="always"), cpu)
    assert not uses_compile(seed_train(compile="never"), cuda)
    monkeypatch.setattr(gpu, "this_machine", lambda: machine_with("Tesla P100", (6, 0)))
    assert not uses_compile(seed_train(), cuda)  # below Triton's 7.0


def _inductor_works() -> bool:
    try:
        compiled = torch.compile(lambda x: x * 2 + 1)
        return bool(torch.equal(compiled(torch.ones(2)), torch.full((2,), 3.0)))
    except Exception:  # noqa: BLE001 - no C++ compiler or an unsupported platform
        return False


@pytest.mark.slow
def test_compiled_training_matches_eager_training() -> None:
    if not _inductor_works():
        pytest.skip("torch.compile cannot build kernels on this machine")
    results = []
    for mode in ("never", "always"):
        torch.manual_seed(0)
        model = build_model(SMALL_MODELS["airnet"])
        params = dataclasses.replace(
            load_profile("fast").train, device="cpu", epochs=1, batch_size=50, lr=0.15, compile=mode
        )
        history, _ = train_a_little(model, params)
        results.append((history[0].train_loss, model.state_dict()))
    (eager_loss, eager), (compiled_loss, compiled) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-3)
    for key in eager:
        assert torch.allclose(eager[key].float(), compiled[key].float(), atol=1e-3), key


def test_training_images_per_step_follow_drop_last(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(SMALL_MODELS["seed_resnet"])
    kept: list[int] = []
    original = F.cross_entropy

    def counting(logits: torch.Tensor, targets: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if logits.requires_grad:  # a training step, not the validation pass
            kept.append(logits.shape[0])
        return original(logits, targets, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", counting)
    train_a_little(model, seed_train(device="cpu", epochs=1, batch_size=64, drop_last=True))
    assert kept == [64, 64, 64]  # 200 images: the last 8 are dropped
    kept.clear()
    train_a_little(model, seed_train(device="cpu", epochs=1, batch_size=64))
    assert kept == [64, 64, 64, 8]


def test_lookahead_pulls_weights_toward_their_average_and_ends_on_it() -> None:
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    lookahead = optim.Lookahead(layer, run_steps=10)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # the optimizer moved the weights
    lookahead.after_step(4)  # not a pull step: nothing happens
    assert torch.equal(layer.weight, torch.ones(1, 2))
    lookahead.after_step(5)  # decay 0.95⁵ × (5/10)³ ≈ 0.097: mostly the new weights
    decay = optim.LOOKAHEAD_DECAY * 0.5**3
    assert torch.allclose(layer.weight, torch.full((1, 2), 1 - decay))
    with torch.no_grad():
        layer.weight.fill_(3.0)
    lookahead.after_step(10)  # the last step: the weights become the average
    assert torch.allclose(layer.weight, torch.full((1, 2), 1 - decay))


def test_logged_learning_rate_is_the_one_each_epochs_last_step_used() -> None:
    model = build_model(SMALL_MODELS["seed_resnet"])
    params = seed_train(
        device="cpu", epochs=2, batch_size=100, drop_last=True, lr=0.09, schedule="onecycle",
        warmup_fraction=0.25, lr_start_factor=0.2, lr_end_factor=0.07,
    )  # fmt: skip
    history, _ = train_a_little(model, params)  # 200 images: 2 steps per epoch, 4 in all
    expected = [0.09 * schedule.lr_factor(step, 2, params) for step in (1, 3)]
    assert [stats.learning_rate for stats in history] == pytest.approx(expected)
    assert history[-1].learning_rate == pytest.approx(0.09 * 0.07)


def test_a_run_resumed_from_a_saved_state_matches_the_uninterrupted_run() -> None:
    """Every piece of state a recipe uses survives: EMA, Lookahead, TrivialAugment, cutmix,
    dropout (the global generator), alternating flip, the schedule, the data order, fp16's
    loss scale and where the low-resolution steps end."""
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=4, batch_size=50, lr=0.15,
        ema_decay=0.9, lookahead=True, augment_policy="trivial", cutmix_alpha=1.0,
        autocast_dtype="float16",  # its loss scaler's state too
        low_res_pixels=24, low_res_fraction=0.75,  # 12 of 16: the resumed run switches
    )  # fmt: skip
    model_params = seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.2)
    train_set, val_set = synthetic_set(200, 0), synthetic_set(50, 1)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(model_params)

    saved: dict[int, dict] = {}

    def keep(epoch: int, state) -> None:
        saved[epoch] = torch.load(_round_trip(state()), weights_only=True)  # as read from disk

    straight = fresh_model()
    straight_ema = fit(straight, params, train_set, val_set, (MEAN, STD), lambda s, _: None,
                       save_state=keep)  # fmt: skip
    torch.manual_seed(123)  # a new process: the global generator is anywhere
    resumed = fresh_model()
    resumed_ema = fit(resumed, params, train_set, val_set, (MEAN, STD), lambda s, _: None,
                      resume_state=saved[2])  # fmt: skip
    for name, weights in straight.state_dict().items():
        assert torch.equal(weights, resumed.state_dict()[name]), name
    for name, weights in straight_ema.state_dict().items():
        assert torch.equal(weights, resumed_ema.state_dict()[name]), name


def _round_trip(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _newton_schulz_reference(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """airbench94_muon's quintic iteration, written out plainly in float64."""
    a, b, c = optim.MUON_NS_COEFFICIENTS[0]
    x = matrix.double() / (matrix.double().norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).float()


def test_muon_steps_conv_filters_by_their_orthogonalised_momentum_and_sgd_steps_the_rest() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODELS["airnet"])
    params = dataclasses.replace(
        load_profile("fast").train, optimizer="muon", muon_lr=0.2, muon_momentum=0.6, lr=0.1
    )
    optimizer = make_optimizer(model, params)
    filters = [p for p in model.parameters() if p.requires_grad and p.ndim == 4]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim < 4]
    (muon_group,) = [group for group in optimizer.param_groups if group.get("muon")]
    assert len(muon_group["params"]) == len(filters) == 6 and muon_group["lr"] == 0.2
    # the rest (the head, the BatchNorm shifts) step exactly as torch's SGD steps a copy of them
    copies = [p.detach().clone().requires_grad_() for p in others]
    sgd_groups = [g for g in optimizer.param_groups if not g.get("muon")]
    where = {id(p): i for i, p in enumerate(others)}
    reference = torch.optim.SGD(
        [{"params": [copies[where[id(p)]] for p in g["params"]], "lr": g["lr"],
          "weight_decay": g["weight_decay"]} for g in sgd_groups],
        lr=params.lr, momentum=params.momentum, nesterov=params.nesterov,
    )  # fmt: skip
    images, labels = synthetic_set(20, 0)
    model.init_whitening(images)
    before = [f.detach().clone() for f in filters]
    momentum = [torch.zeros_like(f) for f in filters]
    for step in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        grads = [f.grad.clone() for f in filters]
        for copy, p in zip(copies, others, strict=True):
            copy.grad = p.grad.clone()
        optimizer.step()
        reference.step()
        for index, (filter_before, grad) in enumerate(zip(before, grads, strict=True)):
            momentum[index] = 0.6 * momentum[index] + grad
            nesterov = grad + 0.6 * momentum[index]
            rescaled = filter_before * filter_before.shape[0] ** 0.5 / filter_before.norm()
            update = _newton_schulz_reference(nesterov.reshape(len(grad), -1), optim.MUON_NS_STEPS)
            expected = rescaled - 0.2 * update.view_as(grad)
            assert torch.allclose(filters[index], expected, atol=1e-5), (step, index)
            before[index] = filters[index].detach().clone()
        for copy, p in zip(copies, others, strict=True):
            assert torch.allclose(copy, p, atol=1e-6)


def test_muon_keys_are_checked_and_read_by_muon_only() -> None:
    from pipeline.config.load import recipe
    from pipeline.errors import PipelineError

    switched = recipe("fast", {"train": {"optimizer": "muon"}}).train  # the muon defaults
    assert (switched.muon_lr, switched.muon_momentum) == (0.24, 0.6)
    with pytest.raises(PipelineError, match="train.muon_lr is not read by train.optimizer 'sgd'"):
        recipe("fast", {"train": {"muon_lr": 0.2}})
    with pytest.raises(PipelineError, match="train.muon_momentum must be in"):
        recipe("fast", {"train": {"optimizer": "muon", "muon_lr": 0.2, "muon_momentum": 1.0}})
    # switching a muon recipe to sgd by an override drops the muon keys with it
    from pipeline.config.load import params_from_dict, profile_values, with_overrides

    muon = {"train": {"optimizer": "muon", "muon_lr": 0.24, "muon_momentum": 0.6}}
    assert recipe("cpu", muon).train.optimizer == "muon"
    sgd = with_overrides(
        with_overrides(profile_values("cpu"), muon), {"train": {"optimizer": "sgd"}}
    )
    assert "muon_lr" not in sgd["train"] and params_from_dict(sgd).train.muon_lr is None
    # muon keeps filter norms fixed: refused for a model whose convs do not all feed a BatchNorm
    wide = {"name": "resnet_wide", "widths": [8, 16, 32], "blocks": [1, 1, 1], "dropout": 0.0}
    with pytest.raises(PipelineError, match="resnet_wide' adds conv outputs unnormalised"):
        recipe("cpu", {"model": wide} | muon)
    with pytest.raises(PipelineError, match="distill.student.name 'resnet_wide'"):
        recipe("cpu", {"distill": {"student": wide | {"max_params": 5_000_000}}} | muon)


def test_a_muon_run_trains_and_resumes_exactly() -> None:
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=3, batch_size=50, lr=0.15,
        optimizer="muon", muon_lr=0.2, muon_momentum=0.6,
    )  # fmt: skip
    train_set, val_set = synthetic_set(200, 0), synthetic_set(50, 1)
    saved: dict[int, dict] = {}

    def run(resume_state: dict | None) -> tuple[torch.nn.Module, list[EpochStats]]:
        torch.manual_seed(0)
        model = build_model(SMALL_MODELS["airnet"])
        model.init_whitening(train_set[0])
        history: list[EpochStats] = []

        def keep(epoch: int, state) -> None:
            saved[epoch] = torch.load(_round_trip(state()), weights_only=True)

        fit(model, params, train_set, val_set, (MEAN, STD), lambda s, _: history.append(s),
            resume_state=resume_state, save_state=keep if resume_state is None else None)  # fmt: skip
        return model, history

    straight, history = run(None)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy > 0.2
    resumed, _ = run(saved[1])
    for name, weights in straight.state_dict().items():
        assert torch.equal(weights, resumed.state_dict()[name]), name


def test_whitening_bias_learns_for_its_epochs_only_and_a_model_without_one_has_none() -> None:
    assert "whiten.bias" not in build_model(SMALL_MODELS["airnet"]).state_dict()
    with_bias = dataclasses.replace(SMALL_MODELS["airnet"], whiten_bias_epochs=1)
    torch.manual_seed(0)
    model = build_model(with_bias)
    assert (
        count_trainable_params(model)
        == count_trainable_params(build_model(SMALL_MODELS["airnet"])) + 24
    )  # 2 × 2·2·3 whitening channels
    params = dataclasses.replace(  # without Lookahead, whose pulls move every weight
        load_profile("fast").train, device="cpu", epochs=3, batch_size=50, lr=0.15, lookahead=False
    )
    biases: list[torch.Tensor] = []
    train_set, val_set = synthetic_set(200, 0), synthetic_set(50, 1)
    model.init_whitening(train_set[0])
    fit(model, params, train_set, val_set, (MEAN, STD),
        lambda s, _: biases.append(model.whiten.bias.detach().clone()))  # fmt: skip
    assert biases[0].abs().sum() > 0  # it learned in epoch 1
    assert torch.equal(biases[0], biases[1]) and torch.equal(biases[1], biases[2])  # then froze
    assert not model.whiten_bias_learns


def test_the_whitening_bias_lr_falls_to_zero_at_the_end_of_its_steps() -> None:
    # the run's schedule (onecycle, starting at 0.2) is not the bias's: it starts at 1
    factors = [schedule.whiten_bias_factor(step, learning_steps=20) for step in range(30)]
    assert factors[0] == 1.0 and factors[10] == pytest.approx(0.5) and factors[19] > 0
    assert all(factor == 0.0 for factor in factors[20:])


def test_fp16_loss_scaling_is_exact_and_skips_a_step_whose_gradients_overflowed() -> None:
    recipe = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=2, batch_size=50, lr=0.15
    )
    cpu = torch.device("cpu")
    trained = []
    for scaler in (None, torch.amp.GradScaler("cpu")):  # float32 steps, scaled or not
        torch.manual_seed(0)
        model = build_model(SMALL_MODELS["airnet"])
        optimizer = make_optimizer(model, recipe)
        for seed in range(3):
            images, labels = synthetic_set(50, seed)
            optim.optimizer_step(model, optimizer, images, labels, recipe, FLOAT32, None, scaler)
        trained.append(model.state_dict())
    for name, weights in trained[0].items():  # scaled by 2¹⁶ and back: bit for bit the same
        assert torch.equal(weights, trained[1][name]), name
    assert optim.make_scaler(choose_precision(cpu, True, "bfloat16"), cpu) is None
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="float16 does nothing with train.mixed_precision"):
        dataclasses.replace(recipe, autocast_dtype="float16", mixed_precision=False)
    fp16 = choose_precision(cpu, True, "float16")
    scaler = optim.make_scaler(fp16, cpu)
    model = build_model(SMALL_MODELS["airnet"])
    optimizer = make_optimizer(model, recipe, fp16)
    before = {k: v.clone() for k, v in model.named_parameters()}
    images, labels = synthetic_set(20, 0)
    overflow = lambda logits, _targets: logits.float().sum() * 1e38 * 1e38  # noqa: E731 - inf
    optim.optimizer_step(model, optimizer, images, labels, recipe, fp16, overflow, scaler)
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())  # skipped
    assert scaler.get_scale() == 2.0**15  # the default 2¹⁶, halved


def test_float16_on_the_cpu_runs_the_t4s_path_for_real_and_learns() -> None:
    """autocast_dtype: float16 on the CPU autocasts (the forward's convolutions run in float16)
    and scales the loss, as on a T4; the loss still falls."""
    recipe = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=3, batch_size=50, lr=0.15,
        autocast_dtype="float16", optimizer="muon", muon_lr=0.05, muon_momentum=0.6,
    )  # fmt: skip
    model = build_model(SMALL_MODELS["airnet"])
    seen = []
    model.classifier.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].dtype))
    history, _ = train_a_little(model, recipe)
    assert torch.float16 in seen  # the training forward ran in half precision
    assert history[-1].train_loss < history[0].train_loss
    assert all(math.isfinite(stats.val_loss) for stats in history)


def test_uint8_images_on_the_device_train_exactly_as_normalised_float_images() -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(200) % 10)
    images = make_images(labels, rng)
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=2, batch_size=50, lr=0.15,
        augment_policy="trivial", cutout=8,
    )  # fmt: skip
    val_set = synthetic_set(50, 1)
    trained = []
    for as_pixels in (False, True):
        train_set = to_device_set(images, labels, MEAN, STD, torch.device("cpu"), as_pixels)
        assert train_set[0].dtype == (torch.uint8 if as_pixels else torch.float32)
        torch.manual_seed(0)
        model = build_model(SMALL_MODELS["airnet"])
        model.init_whitening(to_device_set(images, labels, MEAN, STD, torch.device("cpu"))[0])
        run = dataclasses.replace(params, images_on_device="uint8" if as_pixels else "float32")
        fit(model, run, train_set, val_set, (MEAN, STD), lambda s, _: None)
        trained.append(model.state_dict())
    for name, weights in trained[0].items():
        assert torch.equal(weights, trained[1][name]), name


def test_an_fp16_first_step_skipped_by_the_scaler_raises_no_call_order_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first backward overflows (as fp16 does at too high a scale): the scaler skips that
    step and halves its scale, training goes on, and torch's warning that the schedule stepped
    before the optimizer (it did: the scaler skipped it) is not shown."""
    from pipeline.engine import trainer

    scalers: list[torch.amp.GradScaler] = []

    def kept_scaler(*args: object) -> torch.amp.GradScaler | None:
        scalers.append(optim.make_scaler(*args))
        return scalers[-1]

    monkeypatch.setattr(trainer, "make_scaler", kept_scaler)
    recipe = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=1, batch_size=50,
        autocast_dtype="float16", lookahead=False,  # lookahead's average would undo the steps
    )  # fmt: skip
    model = build_model(SMALL_MODELS["airnet"])
    backwards = []

    def first_overflows(grad: torch.Tensor) -> torch.Tensor:
        backwards.append(1)
        return grad * math.inf if len(backwards) == 1 else grad

    model.classifier.weight.register_hook(first_overflows)
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_a_little(model, recipe)
    assert scalers[0].get_scale() == 2.0**15  # the default 2¹⁶, halved once: one step skipped
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    trained = dict(model.named_parameters())
    assert all(not torch.equal(before[k], trained[k]) for k in before)  # the later steps ran


def test_low_res_steps_train_on_downscaled_batches_then_every_step_at_32_pixels() -> None:
    """train.low_res_pixels 24 for half of 12 steps: the first 6 training forwards see 24×24
    batches, the rest 32×32; validation is always at 32."""
    recipe = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=3, batch_size=50,
        low_res_pixels=24, low_res_fraction=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(SMALL_MODELS["airnet"])
    seen: list[tuple[bool, int]] = []  # (training, side) of every forward
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[-1])))
    history, _ = train_a_little(model, recipe)  # 200 images: 4 steps per epoch, 12 in all
    assert [side for training, side in seen if training] == [24] * 6 + [32] * 6
    assert {side for training, side in seen if not training} == {32}
    assert history[-1].train_loss < history[0].train_loss
    # a share that rounds to every step still leaves the last at 32 (BatchNorm's statistics)
    seen.clear()
    train_a_little(model, dataclasses.replace(recipe, epochs=1, low_res_fraction=0.9))
    assert [side for training, side in seen if training] == [24] * 3 + [32]


def test_downscaling_averages_pixels_and_keeps_a_flat_image_flat() -> None:
    from pipeline.engine.augment import downscaled

    flat = torch.full((2, 3, 32, 32), 0.7)
    small = downscaled(flat, 16)
    assert small.shape == (2, 3, 16, 16) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(small, torch.full_like(small, 0.7))
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[..., ::2] = 1.0  # alternate columns: a 2× downscale averages them to 0.5 (its
    # triangle filter spans 4 input columns; at the borders it is cut and renormalised)
    inner = downscaled(stripes, 16)[..., 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-6)


def test_airnets_global_pool_is_airbenchs_3x3_pool_at_32_pixels_and_takes_smaller_images() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODELS["airnet"]).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        global_max = model(images)
        model.body[-1] = torch.nn.MaxPool2d(3)  # airbench's layer: the last map is 3×3
        assert torch.equal(model(images), global_max)
        model.body[-1] = GlobalMaxPool()
        for side in range(16, 32):  # every train.low_res_pixels
            assert model(torch.randn(2, 3, side, side)).shape == (2, 10)
