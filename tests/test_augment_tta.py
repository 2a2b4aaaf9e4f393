"""Device-side augmentation and test-time augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from conftest import seed_train
from torch import nn

from pipeline.engine.augment import (
    alternating_flip_mask,
    augment_batch,
    augment_state,
    cutout,
    host_generator_for,
    mix_batch,
    random_crop,
    random_flip,
)
from pipeline.engine.normalise import to_device_tensor
from pipeline.engine.tta import evaluate, predict_logits, translate, tta_views


def _batch(count: int = 16) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _state(count: int = 16, seed: int = 1):
    return augment_state(count, [0.5] * 3, [0.25] * 3, seed, torch.device("cpu"))


def test_augmentation_keeps_shape_dtype_and_leaves_labels_alone() -> None:
    images, labels = _batch(), torch.arange(16) % 10
    params = seed_train(cutout=8, augment_policy="trivial", flip="alternating")
    augmented = augment_batch(images, torch.arange(16), 1, params, _state())
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert augmented.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(labels, torch.arange(16) % 10)


def test_alternating_flip_mirrors_each_image_on_every_other_epoch() -> None:
    images = _batch(32)
    state, params = _state(32), seed_train(crop_padding=0, flip="alternating")
    indices = torch.arange(32)
    per_epoch = []
    for epoch in range(1, 6):
        augmented = augment_batch(images, indices, epoch, params, state)
        mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(augmented, images, strict=True)]
        kept = [torch.equal(a, b) for a, b in zip(augmented, images, strict=True)]
        assert all(m != k for m, k in zip(mirrored, kept, strict=True))
        per_epoch.append(mirrored)
    for image in range(32):
        seen = [per_epoch[epoch][image] for epoch in range(5)]
        assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), f"image {image}: {seen}"
    assert 0 < sum(per_epoch[0]) < 32  # epoch 1 is a fair coin per image
    # the mask follows the image, not its place in the batch
    shuffled = torch.randperm(32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        alternating_flip_mask(state.first_epoch_flip, shuffled, 3),
        alternating_flip_mask(state.first_epoch_flip, indices, 3)[shuffled],
    )


def test_cutout_zeroes_one_square_of_the_given_size_per_image() -> None:
    images = _batch(64).abs() + 1  # no zeros before cutout
    cut = cutout(images, 8, torch.Generator().manual_seed(4))
    zeroed = (cut == 0).all(1)  # (N, H, W): all channels zeroed
    counts = zeroed.flatten(1).sum(1)
    assert (
        counts.max() == 64 and counts.min() >= 16
    )  # 8×8 inside the image; a corner clips it to 4×4
    for mask in zeroed:
        rows, cols = mask.nonzero(as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height * width == mask.sum()  # one rectangle
    assert torch.equal(
        cut[~zeroed[:, None].expand_as(cut)], images[~zeroed[:, None].expand_as(cut)]
    )


def test_mixup_and_cutmix_mix_images_and_targets_in_the_same_proportion() -> None:
    images = torch.cat([torch.zeros(8, 3, 32, 32), torch.ones(8, 3, 32, 32)])
    targets = torch.nn.functional.one_hot(
        torch.cat([torch.zeros(8), torch.ones(8)]).long(), 10
    ).float()
    for mixup, cutmix in ((1.0, 0.0), (0.0, 1.0)):
        generator = torch.Generator().manual_seed(6)  # on the CPU, one serves both
        mixed, mixed_targets = mix_batch(images, targets, mixup, cutmix, generator, generator)
        assert torch.allclose(mixed_targets.sum(1), torch.ones(16))
        # the share of "ones" pixels equals the target weight of class 1
        assert torch.allclose(mixed.mean((1, 2, 3)), mixed_targets[:, 1], atol=1e-5)


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    images = _batch(8)
    cropped = random_crop(images, 4, "zeros", torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for image, window in zip(padded, cropped, strict=True):
        matches = [
            torch.equal(image[:, dy : dy + 32, dx : dx + 32], window)
            for dy in range(9)
            for dx in range(9)
        ]
        assert any(matches)
    assert not torch.equal(cropped, images)  # 8 images: some shift is all but certain


def test_crop_without_padding_is_identity_and_reflect_has_no_zero_border() -> None:
    images = _batch(4)
    assert torch.equal(random_crop(images, 0, "zeros", torch.Generator()), images)
    positive = images.abs() + 1
    reflected = random_crop(positive, 4, "reflect", torch.Generator().manual_seed(0))
    assert (reflected > 0).all()


def test_random_flip_mirrors_each_image_or_leaves_it() -> None:
    images = _batch(32)
    flipped = random_flip(images, torch.Generator().manual_seed(3))
    same = [torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 0 < sum(mirrored) < 32


def test_normalisation_uses_the_given_statistics() -> None:
    images = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
    tensor = to_device_tensor(images, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], torch.device("cpu"))
    assert tensor.shape == (2, 3, 32, 32)
    assert torch.allclose(tensor, torch.full_like(tensor, 2.0))


class _AsymmetricModel(nn.Module):
    """Logits that depend on left-right position, so a flip changes them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_tta_flip_is_the_mean_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model, images = _AsymmetricModel(), _batch(6)
    expected = (model(images) + model(images.flip(3))) / 2
    got = predict_logits(model, images, "flip", batch_size=4)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(
        predict_logits(model, images, "none", batch_size=4), model(images), atol=1e-5
    )
    assert len(tta_views(images, "flip")) == 2


def test_flip_translate_averages_six_views_with_airbench_weights() -> None:
    torch.manual_seed(0)
    model, images = _AsymmetricModel(), _batch(6)
    views = tta_views(images, "flip_translate")
    assert len(views) == 6 and sum(weight for _, weight in views) == 1.0
    shifted = translate(images, 1, 1)
    assert torch.equal(shifted[:, :, 1:, 1:], images[:, :, :-1, :-1])  # moved down-right by one
    assert torch.equal(translate(images, -1, -1)[:, :, :-1, :-1], images[:, :, 1:, 1:])
    plain = (model(images) + model(images.flip(3))) / 2
    moved = sum(model(v) + model(v.flip(3)) for v in (translate(images, -1, -1), shifted)) / 4
    got = predict_logits(model, images, "flip_translate", batch_size=4)
    assert torch.allclose(got, (plain + moved) / 2, atol=1e-5)


def test_evaluate_counts_correct_predictions() -> None:
    model = _AsymmetricModel()
    images = _batch(10)
    labels = predict_logits(model, images, "none", 10).argmax(1)
    accuracy, loss = evaluate(model, images, labels, "none", batch_size=3)
    assert accuracy == 1.0 and loss > 0


def test_multicrop_averages_ten_equal_views_of_two_pixel_diagonal_shifts() -> None:
    torch.manual_seed(0)
    model, images = _AsymmetricModel(), _batch(4)
    views = tta_views(images, "multicrop")
    assert len(views) == 10 and {weight for _, weight in views} == {0.1}
    assert torch.equal(translate(images, 2, 2)[:, :, 2:, 2:], images[:, :, :-2, :-2])
    crops = [images] + [translate(images, r, c) for r in (-2, 2) for c in (-2, 2)]
    expected = sum(model(c) + model(c.flip(3)) for c in crops) / 10
    assert torch.allclose(predict_logits(model, images, "multicrop", 3), expected, atol=1e-5)


class _CountingModel(nn.Module):
    """A fixed random conv head that counts the images it sees (forward passes × batch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Sequential(nn.Conv2d(3, 10, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += x.shape[0]
        return self.head(x) * 20  # confident enough that the softmax spreads


def test_tta_on_the_least_confident_fraction_only_leaves_the_rest_on_the_plain_view() -> None:
    model, images = _CountingModel(), _batch(40)
    plain = predict_logits(model, images, "none", batch_size=16)
    full = predict_logits(model, images, "flip_translate", batch_size=16)
    model.images_seen = 0
    partial = predict_logits(model, images, "flip_translate", batch_size=16, tta_fraction=0.25)
    unsure = plain.softmax(1).amax(1).argsort()[:10]  # ceil(0.25 × 40) least confident
    sure = torch.ones(40, dtype=torch.bool)
    sure[unsure] = False
    assert torch.allclose(partial[unsure], full[unsure], atol=1e-5)
    assert torch.equal(partial[sure], plain[sure])
    assert model.images_seen == 40 + 10 * 5  # one plain pass, then 5 more views of 10 images
    # the whole set, or no TTA at all: the fraction changes nothing
    assert torch.equal(predict_logits(model, images, "flip", 16, tta_fraction=1.0),
                       predict_logits(model, images, "flip", 16))  # fmt: skip
    assert torch.equal(predict_logits(model, images, "none", 16, tta_fraction=0.1), plain)


def test_tta_fraction_must_be_a_share_of_the_images() -> None:
    import pytest

    from pipeline.config.load import params_from_dict
    from pipeline.errors import PipelineError

    for section in ("select", "predict"):
        with pytest.raises(PipelineError, match=rf"{section}.tta_fraction must be in \(0, 1\]"):
            params_from_dict({section: {"tta_fraction": 0}})
    assert params_from_dict({"predict": {"tta_fraction": 0.25}}).predict.tta_fraction == 0.25


def test_augmentation_draws_no_number_back_from_the_gpu() -> None:
    """The scalar seeds (mixup's Beta, the policy's draw) come from a CPU generator: on a GPU a
    device generator's number read with int() would sync every step. On the CPU it is the same
    generator, so CPU runs draw exactly as before."""
    cpu_state = augment_state(16, [0.5] * 3, [0.25] * 3, 3, torch.device("cpu"))
    assert cpu_state.host_generator is cpu_state.generator
    on_a_gpu = SimpleNamespace(device=torch.device("cuda"))  # what a CUDA generator reports
    host = host_generator_for(on_a_gpu, 9)
    assert host.device.type == "cpu" and host.initial_seed() == 9
