"""`airnet`: the airbench family (Keller Jordan's CIFAR-10 speed records).

A frozen 2×2 patch-whitening conv, then three conv groups (conv → max-pool → BN → GELU → conv →
BN → GELU), identity-initialised convs. widths [64, 256, 256]: 1,971,328 trainable parameters
(airbench94's net without its whitening bias; `whiten_bias_epochs` > 0 adds that bias, 24
params, which learns for those first epochs); with `residual: true` each group gets a third
conv added to its output (a modified ResNet), and `residual_convs` > 1 adds more such convs one
after another (a deeper, narrower net in the same budget: airbench96's direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.checks import MAX_EPOCHS, require, require_channels, require_range
from pipeline.models.registry import ModelConfig, register_model

MAX_RESIDUAL_CONVS = 16  # residual convs per group


@dataclass(frozen=True)
class AirNetConfig(ModelConfig):
    # channels of the three conv groups; the default with residual: 4,836,736 trainable params
    widths: list[int] = field(default_factory=lambda: [128, 304, 304])
    residual: bool = True  # a third conv per group, added to the group's output
    # epochs the frozen whitening conv's bias (24 params) learns, at the BatchNorm shifts' lr
    # falling linearly to 0 over them in place of the schedule (airbench94_muon: 3 of 8); then it
    # stays. 0: no bias. A model key, as it decides whether the model has that bias at all.
    whiten_bias_epochs: int = 0
    # with residual: convs added to each group's output one after another, x + GELU(BN(conv(x)))
    # each; 1: the residual airnet's third conv. 2 is deeper at the same budget with narrower
    # widths ([128, 256, 256] with 2: 4,898,816 params, four convs per group); at most 16
    residual_convs: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_channels(self.widths, "model.widths", 3)
        require_range(self.whiten_bias_epochs, "model.whiten_bias_epochs", 0, MAX_EPOCHS)
        require_range(self.residual_convs, "model.residual_convs", 1, MAX_RESIDUAL_CONVS)
        require(
            self.residual or self.residual_convs == 1, "model.residual_convs",
            "1 unless model.residual is true (a plain airnet adds no convs)", self.residual_convs,
        )  # fmt: skip


class AirBatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: scale frozen at 1 (only the shift trains), running stats with momentum 0.4."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class DiracConv(nn.Conv2d):
    """3×3 conv, no bias, 'same' padding; the first in_channels filters start as the identity."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(in_channels, out_channels)])


class AirConvGroup(nn.Module):
    """conv → 2×2 max-pool → BN → GELU → conv → BN → GELU, then `residual_convs` times
    x + GELU(BN(conv(x))) (0: not residual; 1: the residual airnet's third conv)."""

    def __init__(self, in_channels: int, out_channels: int, residual_convs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            DiracConv(in_channels, out_channels),
            nn.MaxPool2d(2),
            AirBatchNorm(out_channels),
            nn.GELU(),
            DiracConv(out_channels, out_channels),
            AirBatchNorm(out_channels),
            nn.GELU(),
        )
        units = [
            nn.Sequential(
                DiracConv(out_channels, out_channels), AirBatchNorm(out_channels), nn.GELU()
            )
            for _ in range(residual_convs)
        ]
        # the first unit keeps the name it had when there was only one, so checkpoints load;
        # `deeper` (model.residual_convs > 1) holds the rest
        self.extra = units[0] if units else None
        self.deeper = nn.ModuleList(units[1:]) if len(units) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.extra is not None:
            x = x + self.extra(x)
        for unit in self.deeper if self.deeper is not None else ():
            x = x + unit(x)
        return x


class GlobalMaxPool(nn.Module):
    """The max over each channel's whole map, as a max-pool whose window is the map: at 32
    pixels airnet's last map is 3×3, so this is airbench's MaxPool2d(3); at train.low_res_pixels
    the map is smaller and the same layer takes it. Not AdaptiveMaxPool2d: its CUDA backward
    has no deterministic implementation (train.deterministic would refuse it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=x.shape[-2:])


WHITENING_PATCH = 2  # pixels: the whitening conv sees 2×2×3 = 12 values per position
WHITENING_EPS = 5e-4  # added to each eigenvalue so near-constant directions are not blown up


class AirNet(nn.Module):
    """Whitening conv (frozen) → GELU → 3 conv groups → global max-pool → linear (no bias) × 1/9.

    With `whiten_bias_epochs` > 0 the whitening conv has a bias (zero at first), trained for
    those epochs only (airbench94 trains it for 3): while `whiten_bias_learns` is true. Then it
    is used detached, so again nothing before the first conv group needs a gradient (that
    skips the group's input-gradient conv: ~10% of a step). The trainer sets the flag.
    """

    def __init__(
        self, widths: list[int], residual: bool, whiten_bias_epochs: int = 0,
        residual_convs: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        patch_values = 3 * WHITENING_PATCH**2
        # Weights frozen, set from the data by init_whitening.
        self.whiten = nn.Conv2d(
            3, 2 * patch_values, WHITENING_PATCH, padding=0, bias=whiten_bias_epochs > 0
        )
        self.whiten.weight.requires_grad = False
        if self.whiten.bias is not None:
            nn.init.zeros_(self.whiten.bias)
        self.whiten_bias_epochs = whiten_bias_epochs
        self.whiten_bias_learns = whiten_bias_epochs > 0
        in_channels, groups = 2 * patch_values, []
        for width in widths:
            groups.append(AirConvGroup(in_channels, width, residual_convs if residual else 0))
            in_channels = width
        self.body = nn.Sequential(nn.GELU(), *groups, GlobalMaxPool())
        self.classifier = nn.Linear(in_channels, NUM_CLASSES, bias=False)
        self.logit_scale = 1 / 9  # airbench's output scaling: keeps early logits small

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised (N, 3, H, W) training images.

        Filters are the eigenvectors of the 2×2-patch covariance scaled by 1/sqrt(λ + ε), and
        their negatives (so the GELU after it keeps both signs), giving decorrelated channels.
        """
        patches = images.float().unfold(2, WHITENING_PATCH, 1).unfold(3, WHITENING_PATCH, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * WHITENING_PATCH**2).double()
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues[:, None] + WHITENING_EPS)).float()
        filters = filters.reshape(-1, 3, WHITENING_PATCH, WHITENING_PATCH)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.whiten.bias
        if bias is not None and not self.whiten_bias_learns:
            bias = bias.detach()
        features = torch.flatten(self.body(F.conv2d(x, self.whiten.weight, bias)), 1)
        return self.classifier(features) * self.logit_scale


WHITENING_IMAGES = 2000  # training images whose 2×2 patches set the whitening filters


@register_model("airnet", AirNetConfig, residual=lambda config: config.residual)
def build_airnet(config: AirNetConfig) -> AirNet:
    return AirNet(
        list(config.widths), config.residual, config.whiten_bias_epochs, config.residual_convs
    )
