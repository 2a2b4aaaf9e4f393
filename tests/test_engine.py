"""The fast trainer's parts: every model trains, whitening whitens, EMA follows, compile is faithful."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seed_model, seed_train

from pipeline.config.load import load_profile
from pipeline.config.params import TrainParams
from pipeline.data.synthetic import make_images
from pipeline.engine import optim, schedule
from pipeline.engine.loop import EpochStats, fit
from pipeline.engine.models import AirNet, build_model, count_trainable_params, is_residual
from pipeline.engine.normalise import to_device_set
from pipeline.engine.optim import make_optimizer, uses_compile

MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]
SMALL_MODELS = {
    "seed_resnet": seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0),
    "airnet": seed_model(name="airnet", widths=[8, 16, 16], residual=False),
    "airnet residual": seed_model(name="airnet", widths=[8, 16, 16], residual=True),
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
    assert counts == {"fast": 1_971_328, "default": 4_836_736, "seed": 1_177_130, "cpu": 1_112_160}
    assert all(count <= 5_000_000 for count in counts.values())
    assert is_residual(load_profile("default").model) and is_residual(load_profile("seed").model)
    assert not is_residual(load_profile("fast").model)


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


def test_compile_is_on_for_cuda_only_unless_forced() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_compile(seed_train(compile="auto"), cpu) and uses_compile(seed_train(), cuda)
    assert uses_compile(seed_train(compile="always"), cpu)
    assert not uses_compile(seed_train(compile="never"), cuda)


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
    dropout (the global generator), alternating flip, the schedule and the data order."""
    params = dataclasses.replace(
        load_profile("fast").train, device="cpu", epochs=4, batch_size=50, lr=0.15,
        ema_decay=0.9, lookahead=True, augment_policy="trivial", cutmix_alpha=1.0,
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
