"""One optimizer step and what shapes it: SGD with a BatchNorm/bias lr scale, Muon for conv
filters, Lookahead, autocast (engine/device.py's precision), torch.compile."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.params import TrainParams
from pipeline.engine.device import FLOAT32, Precision, compile_choice

# Muon as airbench94_muon runs it: 3 Newton–Schulz iterations of Keller Jordan's quintic (the
# update comes out only roughly orthogonal, singular values in about 0.5–1.5, which trains as well)
MUON_NS_STEPS = 3
MUON_NS_COEFFICIENTS = [(3.4445, -4.7750, 2.0315)]
LOOKAHEAD_EVERY = 5  # steps between Lookahead pulls
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY  # the average's decay at the end of the run


class MuonSGD(torch.optim.SGD):
    """torch's SGD, where groups marked `muon` (conv filters) take Muon steps instead.

    A filter's step: the Nesterov momentum of its gradient (momentum `muon_momentum`),
    flattened to (out, in × k × k) and orthogonalised by Newton–Schulz (timm's
    `zeropower_via_newtonschulz`, in the run's autocast dtype: `orthogonal_dtype`), after the
    filter is rescaled to norm sqrt(out). Every conv here feeds a BatchNorm, so
    a filter's scale changes nothing but its effective step size; fixing it makes `lr` mean the
    same all run (airbench94_muon). SGD then applies the update at the group's (scheduled) lr,
    with no momentum or weight decay of its own. The momentum lives in the optimizer's state,
    so `state_dict` carries it and a resumed run continues exactly.
    """

    def __init__(
        self, *args: object, orthogonal_dtype: torch.dtype = torch.float32, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)
        self.orthogonal_dtype = orthogonal_dtype
        if any(group.get("muon") for group in self.param_groups):  # an old timm fails here, early
            from timm.optim.muon import zeropower_via_newtonschulz  # Muon runs only import timm

            self.orthogonalise = zeropower_via_newtonschulz

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        for group in self.param_groups:
            if not group.get("muon"):
                continue
            momentum = group["muon_momentum"]
            for filters in group["params"]:
                if filters.grad is None:
                    continue
                state = self.state[filters]
                if "muon_momentum_buffer" not in state:
                    state["muon_momentum_buffer"] = torch.zeros_like(filters.grad)
                buffer = state["muon_momentum_buffer"].mul_(momentum).add_(filters.grad)
                update = filters.grad.add(buffer, alpha=momentum)  # Nesterov
                filters.mul_(filters.shape[0] ** 0.5 / filters.norm())
                orthogonal = self.orthogonalise(
                    update.reshape(len(update), -1), MUON_NS_STEPS, MUON_NS_COEFFICIENTS,
                    dtype=self.orthogonal_dtype,
                )  # fmt: skip
                filters.grad.copy_(orthogonal.view_as(filters))
        return super().step(closure)


def make_optimizer(
    model: nn.Module, params: TrainParams, precision: Precision = FLOAT32
) -> torch.optim.SGD:
    """SGD over the trainable params; BatchNorm and bias params (1-d) get `bias_lr_scale`× the lr.

    Their weight decay coefficient is divided by the same scale, so every param still shrinks by
    lr × weight_decay per step (airbench's bias scaler: the scale speeds up learning only).
    With `train.optimizer: muon`, conv filters (4-d) take Muon steps of `muon_lr` instead
    (`MuonSGD`, orthogonalising in `precision`'s dtype); the head and the 1-d params keep the
    SGD above. An airnet's learning whitening
    bias is a group of its own (`whiten_bias`: the trainer gives it a schedule that ends).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    whiten_bias = [model.whiten.bias] if getattr(model, "whiten_bias_epochs", 0) else []
    muon = params.optimizer == "muon"
    filters = [p for p in trainable if p.ndim == 4] if muon else []
    matrices = [p for p in trainable if p.ndim > 1 and not any(p is f for f in filters)]
    vectors = [p for p in trainable if p.ndim <= 1 and not any(p is b for b in whiten_bias)]
    scale = params.bias_lr_scale
    groups = [
        {"params": matrices, "lr": params.lr, "weight_decay": params.weight_decay},
        {"params": vectors, "lr": params.lr * scale, "weight_decay": params.weight_decay / scale},
        {
            "params": whiten_bias, "lr": params.lr * scale,
            "weight_decay": params.weight_decay / scale, "whiten_bias": True,
        },
        {
            "params": filters, "lr": params.muon_lr, "weight_decay": 0.0, "momentum": 0.0,
            "nesterov": False, "muon": True, "muon_momentum": params.muon_momentum,
        },
    ]  # fmt: skip
    return MuonSGD(
        [group for group in groups if group["params"]],
        lr=params.lr,
        momentum=params.momentum,
        nesterov=params.nesterov,
        orthogonal_dtype=precision.matmul_dtype,
    )


def uses_compile(params: TrainParams, device: torch.device) -> bool:
    return compile_choice(params.compile, device)[0]


def compiled(model: nn.Module, params: TrainParams, device: torch.device) -> nn.Module:
    """`torch.compile(model)` when `train.compile` asks for it (auto: a GPU Triton supports,
    engine/device.py's `compile_choice`), else the model.

    The compiled module shares the model's parameters; a platform where compiling is impossible
    fails here, loudly, rather than training something else.
    """
    return torch.compile(model, dynamic=False) if uses_compile(params, device) else model


def optimizer_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    params: TrainParams,
    precision: Precision,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (autocast in `precision`), the loss, backward, one optimizer step.

    `targets` are class indices or (mixup/cutmix) class probabilities; the loss is their
    label-smoothed cross-entropy unless `loss_function(logits, targets)` is given (a student's
    distillation loss). With a `scaler` (fp16) the loss is scaled for the backward pass, the
    gradients unscaled before the step, and a step whose gradients overflowed is skipped (the
    scale then halves). Returns (loss, logits).
    """
    with precision.autocast(images.device):
        logits = network(images)
    if loss_function is not None:
        loss = loss_function(logits, targets)
    else:
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=params.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, logits


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 training's loss scaler, else None. The same on the CPU as on a T4 (torch's
    GradScaler runs on both): the tests check it there."""
    return torch.amp.GradScaler(device.type) if precision.loss_scaling else None


class Lookahead:
    """airbench94's Lookahead: a slow average of the weights that the weights are reset to.

    Every `LOOKAHEAD_EVERY` steps the average moves toward the weights by (1 - decay) and the
    weights are set to it; decay grows from 0 to 0.95⁵ as (step / total)³, so early training is
    untouched. After the last step the weights become the average.
    """

    def __init__(self, model: nn.Module, run_steps: int) -> None:
        self.model, self.run_steps = model, run_steps
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def pull(self, decay: float) -> None:
        for name, weights in self.model.state_dict().items():
            if weights.is_floating_point():
                self.average[name].lerp_(weights, 1 - decay)
                weights.copy_(self.average[name])

    def after_step(self, step: int) -> None:  # `step`: optimizer steps done (1-based)
        if step == self.run_steps:
            self.pull(decay=1.0)  # the weights become the average
        elif step % LOOKAHEAD_EVERY == 0:
            self.pull(decay=LOOKAHEAD_DECAY * (step / self.run_steps) ** 3)
