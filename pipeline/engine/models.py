"""Models, built by name (`model.name`), and the competition's trainable-parameter budget.

- `seed_resnet`: the seed team's network, reproduced exactly at the defaults (base_width 32,
  blocks [4, 4, 3], dropout 0.17): 1,177,130 trainable parameters. Residual.
- `airnet`: the airbench family (Keller Jordan's CIFAR-10 speed records): a frozen 2×2
  patch-whitening conv, then three conv groups (conv → max-pool → BN → GELU → conv → BN → GELU),
  identity-initialised convs. widths [64, 256, 256]: 1,971,328 trainable parameters (airbench94's
  net without its whitening bias; `whiten_bias_epochs` > 0 adds that bias, 24 params, which
  learns for those first epochs); with `residual: true` each group gets a third conv added to
  its output (a modified ResNet), and `residual_convs` > 1 adds more such convs one after
  another (a deeper, narrower net in the same budget: airbench96's direction).
- `resnet_wide`: a pre-activation wide ResNet (WRN) sized by `widths` and `blocks`;
  widths [64, 128, 256], blocks [2, 2, 2] is WRN-16-4: 2,776,906 trainable parameters. Residual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classes import NUM_CLASSES
from pipeline.config.params import ModelParams
from pipeline.errors import PipelineError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-Dropout-conv3×3-BN-Dropout, plus a shortcut (1×1 conv + BN on a shape change), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class SeedResNet(nn.Module):
    """Stem 3×3 conv + BN + ReLU, stages of BasicBlocks doubling width (stride 2 after the first), avg-pool, linear."""

    def __init__(self, base_width: int, blocks: list[int], dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(3, base_width), nn.BatchNorm2d(base_width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_channels = base_width
        for stage, block_count in enumerate(blocks):
            out_channels = base_width * 2**stage
            for index in range(block_count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride, dropout))
                in_channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.pool = GlobalMeanPool()
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class GlobalMeanPool(nn.Module):
    """(N, C, H, W) → (N, C, 1, 1), the mean over the map. Not AdaptiveAvgPool2d: its CUDA
    backward has no deterministic kernel, so `train.deterministic` would refuse it; a mean's
    backward spreads the gradient evenly and is deterministic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


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


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-Dropout-conv3×3, plus the input (1×1 conv of the pre-activation on a shape change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            conv3x3(out_channels, out_channels),
        )
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre(x)
        shortcut = self.shortcut(activated) if self.shortcut is not None else x
        return self.residual(activated) + shortcut


class WideResNet(nn.Module):
    """Stem conv3×3 → stages of pre-activation blocks (stride 2 after the first) → BN-ReLU → avg-pool → linear."""

    def __init__(self, widths: list[int], blocks: list[int], dropout: float) -> None:
        super().__init__()
        self.stem = conv3x3(3, widths[0])
        layers: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (width, block_count) in enumerate(zip(widths, blocks, strict=True)):
            for index in range(block_count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(PreActBlock(in_channels, width, stride, dropout))
                in_channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), GlobalMeanPool()
        )
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.head(self.stages(self.stem(x))), 1))


MODEL_BUILDERS: dict[str, Callable[[ModelParams], nn.Module]] = {
    "seed_resnet": lambda p: SeedResNet(p.base_width, list(p.blocks), p.dropout),
    "airnet": lambda p: AirNet(list(p.widths), p.residual, p.whiten_bias_epochs, p.residual_convs),
    "resnet_wide": lambda p: WideResNet(list(p.widths), list(p.blocks), p.dropout),
}
WHITENING_IMAGES = 2000  # training images whose 2×2 patches set airnet's whitening filters
RESIDUAL_MODELS = ("seed_resnet", "resnet_wide")  # plus airnet with residual: true


def is_residual(params: ModelParams) -> bool:
    """Whether the model is a ResNet in the assignment's sense (identity shortcuts)."""
    return params.name in RESIDUAL_MODELS or (params.name == "airnet" and params.residual)


def count_trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_model_params(params: ModelParams) -> int:
    """`params`'s trainable parameters, counted on PyTorch's meta device: shapes without memory,
    so a checkpoint's config of any size is counted before anything is allocated."""
    with torch.device("meta"):
        return count_trainable_params(MODEL_BUILDERS[params.name](params))


def build_model(params: ModelParams) -> nn.Module:
    """Build `params.name`; refuse it, before allocating it, if it is over `params.max_params`."""
    if params.name not in MODEL_BUILDERS:
        raise PipelineError(
            f"params: model.name must be one of {sorted(MODEL_BUILDERS)}, found {params.name!r}"
        )
    trainable = count_model_params(params)
    if trainable > params.max_params:
        raise PipelineError(
            f"params: model '{params.name}' has {trainable:,} trainable parameters, over the "
            f"budget model.max_params = {params.max_params:,}; make it smaller"
        )
    return MODEL_BUILDERS[params.name](params)


def check_ensemble_budget(parts: list[tuple[str, int]], max_params: int, remedy: str) -> int:
    """The total trainable parameters of an ensemble's (name, count) parts, refused over budget."""
    total = sum(count for _, count in parts)
    if total > max_params:
        listed = " + ".join(f"{name} {count:,}" for name, count in parts)
        raise PipelineError(
            f"ensemble over budget: {listed} = {total:,} trainable parameters, over "
            f"model.max_params = {max_params:,}; {remedy}"
        )
    return total


class Ensemble(nn.Module):
    """Models whose logits are averaged (in float32): a seed ensemble that select chose.

    Its trainable parameters are all of its members' together, so the budget covers the whole.
    Averaging commutes with TTA's weighted view average, so TTA applies to it as to one model.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(0)


def model_config(params: ModelParams) -> dict:
    """The model's params as plain data, stored in checkpoints to rebuild it later."""
    return dataclasses.asdict(params)
