"""Device-side augmentation and test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.augment import augment_batch, random_crop, random_flip, to_device_tensor
from pipeline.tta import evaluate, predict_logits, tta_views


def _batch(count: int = 16) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_augmentation_keeps_shape_dtype_and_leaves_labels_alone() -> None:
    images, labels = _batch(), torch.arange(16) % 10
    augmented = augment_batch(images, 4, "zeros", True, torch.Generator().manual_seed(1))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert torch.equal(labels, torch.arange(16) % 10)


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


def test_evaluate_counts_correct_predictions() -> None:
    model = _AsymmetricModel()
    images = _batch(10)
    labels = predict_logits(model, images, "none", 10).argmax(1)
    accuracy, loss = evaluate(model, images, labels, "none", batch_size=3)
    assert accuracy == 1.0 and loss > 0
