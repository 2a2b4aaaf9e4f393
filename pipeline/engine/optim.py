"""One optimizer step and what shapes it: SGD with a BatchNorm/bias lr scale, Lookahead,
bf16 autocast, torch.compile."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.params import TrainParams
from pipeline.engine.device import autocast

LOOKAHEAD_EVERY = 5  # steps between Lookahead pulls
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY  # the average's decay at the end of the run


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.SGD:
    """SGD over the trainable params; BatchNorm and bias params (1-d) get `bias_lr_scale`× the lr.

    Their weight decay coefficient is divided by the same scale, so every param still shrinks by
    lr × weight_decay per step (airbench's bias scaler: the scale speeds up learning only).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in trainable if p.ndim > 1]
    vectors = [p for p in trainable if p.ndim <= 1]
    scale = params.bias_lr_scale
    groups = [
        {"params": matrices, "lr": params.lr, "weight_decay": params.weight_decay},
        {"params": vectors, "lr": params.lr * scale, "weight_decay": params.weight_decay / scale},
    ]
    return torch.optim.SGD(
        [group for group in groups if group["params"]],
        lr=params.lr,
        momentum=params.momentum,
        nesterov=params.nesterov,
    )


def uses_compile(params: TrainParams, device: torch.device) -> bool:
    return params.compile == "always" or (params.compile == "auto" and device.type == "cuda")


def compiled(model: nn.Module, params: TrainParams, device: torch.device) -> nn.Module:
    """`torch.compile(model)` when `train.compile` asks for it (auto: CUDA only), else the model.

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
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on CUDA), the loss, backward, one SGD step.

    `targets` are class indices or (mixup/cutmix) class probabilities; the loss is their
    label-smoothed cross-entropy unless `loss_function(logits, targets)` is given (a student's
    distillation loss). Returns (loss, logits).
    """
    with autocast(images.device, params.mixed_precision):
        logits = network(images)
    if loss_function is not None:
        loss = loss_function(logits, targets)
    else:
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=params.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


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
