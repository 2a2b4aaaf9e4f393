"""What one training run's optimizer steps need, built once (`build_trainer`), and the run's
whole state: `Trainer.state` / `Trainer.restore` save and continue a run exactly.

It holds the optimizer, the lr schedule, EMA, Lookahead, torch.compile and the data-parallel
wrapper, the data-order and augmentation generators, and where the run is (`step`).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config.train_params import TrainParams, equal_share_problem
from pipeline.engine.augment import AugmentState, augment_state
from pipeline.engine.device import Precision, choose_precision
from pipeline.engine.distillation import DistillTargets
from pipeline.engine.distributed import RANK_SEED_STRIDE, World, current_world
from pipeline.engine.optim import Lookahead, compiled, make_optimizer, make_scaler
from pipeline.engine.schedule import lr_factor, steps_per_epoch, total_steps, whiten_bias_factor
from pipeline.errors import PipelineError


class StateMismatch(Exception):
    """A saved state that loads but does not fit the run (another shape, a missing piece)."""


def random_states() -> dict[str, Any]:
    """The global generators' states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        # the run's own GPU only: a resume with fewer (or other) GPUs visible still fits
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],
    }


def restore_random_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"][0])  # the current device's: the run's GPU


@dataclass
class Trainer:
    """What one run's optimizer steps need, and where the run is (`step`, `first_epoch`)."""

    model: nn.Module
    params: TrainParams
    world: World
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Any  # timm's ModelEmaV3, or None
    lookahead: Lookahead | None
    stepped: nn.Module  # what the optimizer steps run through (compiled, DDP-wrapped)
    evaluated: nn.Module  # the raw weights for validation (compiled, never DDP)
    evaluated_ema: nn.Module | None
    order_generator: torch.Generator  # data order: the same on every rank
    augment: AugmentState
    batches_per_epoch: int
    run_steps: int
    whiten_bias_steps: int  # the first steps in which an airnet's whitening bias learns
    low_res_steps: int  # the first steps on batches downscaled to train.low_res_pixels
    precision: Precision  # engine/device.py's choice for this GPU (or the CPU)
    scaler: torch.amp.GradScaler | None  # fp16's loss scaler
    distill: DistillTargets | None = None  # a student's soft labels (distill stage)
    step: int = 0  # optimizer steps done
    first_epoch: int = 1

    def state(self, epoch: int) -> dict:
        """Everything that continues the run after `epoch` exactly as if it had never stopped."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.average if self.lookahead is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment.generator.get_state(),
            "host_generator": self.augment.host_generator.get_state(),
            "random": random_states(), "step": self.step, "epoch": epoch,
        }  # fmt: skip

    def restore(self, state: dict) -> None:
        """Continue from `state` (a `state()`); a state that does not fit raises StateMismatch."""
        device = next(self.model.parameters()).device
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            if self.lookahead is not None:
                self.lookahead.average = {k: v.to(device) for k, v in state["lookahead"].items()}
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.order_generator.set_state(state["order_generator"])
            self.augment.generator.set_state(state["augment_generator"])
            self.augment.host_generator.set_state(state["host_generator"])
            restore_random_states(state["random"])
            self.step, self.first_epoch = state["step"], state["epoch"] + 1
            if self.world.rank > 0:  # the state holds rank 0's streams: other ranks draw their own
                rank_seed = self.params.seed + self.world.rank * RANK_SEED_STRIDE + self.first_epoch
                self.augment.generator.manual_seed(rank_seed)
                self.augment.host_generator.manual_seed(rank_seed)
                torch.manual_seed(rank_seed)  # dropout
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
            raise StateMismatch(f"{type(error).__name__}: {error}") from None


def sync_batchnorm_problem(params: TrainParams, world_size: int, device_kind: str) -> str | None:
    if params.sync_batchnorm and world_size > 1 and device_kind != "cuda":
        return (
            "train.sync_batchnorm: needs CUDA (torch's SyncBatchNorm is GPU-only); set "
            "train.sync_batchnorm: false to train with train.nproc processes on the CPU"
        )
    return None


def build_trainer(
    model: nn.Module, params: TrainParams, image_count: int,
    normalization: tuple[list[float], list[float]], device: torch.device,
) -> Trainer:  # fmt: skip
    world = current_world()  # under torchrun: this rank's share of each batch, rank 0 reports
    problem = equal_share_problem(params.batch_size, params.drop_last, world.size)
    if problem:  # torchrun started by hand (several machines) skips the params' own check
        raise PipelineError(problem)
    order_generator = torch.Generator().manual_seed(params.seed)  # the same on every rank
    rank_seed = params.seed + world.rank * RANK_SEED_STRIDE if world.rank else None
    augment = augment_state(image_count, *normalization, params.seed, device, rank_seed)
    problem = sync_batchnorm_problem(params, world.size, device.type)
    if problem:
        raise PipelineError(problem)
    if params.sync_batchnorm and world.size > 1:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # its BatchNorm children, in place
    batches_per_epoch = steps_per_epoch(image_count, params)
    run_steps = total_steps(batches_per_epoch, params)
    precision = choose_precision(device, params.mixed_precision, params.autocast_dtype)
    optimizer = make_optimizer(model, params, precision)
    whiten_bias_steps = min(run_steps, getattr(model, "whiten_bias_epochs", 0) * batches_per_epoch)
    # 0 when low_res_pixels is; the last step always at 32 (BatchNorm's statistics with it)
    low_res_steps = min(round(params.low_res_fraction * run_steps), run_steps - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [  # one multiplier per param group: the whitening bias's ends with its learning steps
            functools.partial(whiten_bias_factor, learning_steps=whiten_bias_steps)
            if group.get("whiten_bias")
            else functools.partial(lr_factor, steps_per_epoch=batches_per_epoch, params=params)
            for group in optimizer.param_groups
        ],
    )
    ema = None
    if params.ema_decay:
        from timm.utils import ModelEmaV3  # only runs that ask for EMA pay for importing timm

        ema = ModelEmaV3(model, decay=params.ema_decay, use_warmup=True)
    lookahead = Lookahead(model, run_steps) if params.lookahead else None
    evaluated = compiled(model, params, device)
    stepped = evaluated
    if world.size > 1:  # DDP averages the gradients over the ranks; evaluation stays plain
        ids = [device.index] if device.type == "cuda" else None
        # a whitening bias that stops getting gradients inside the run: DDP must expect that
        # (it costs a graph traversal per step, so only then)
        unused = 0 < whiten_bias_steps < run_steps
        stepped = compiled(
            DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused),
            params, device,
        )  # fmt: skip
        evaluated = model
    evaluated_ema = compiled(ema.module, params, device) if ema is not None else None
    return Trainer(model, params, world, optimizer, scheduler, ema, lookahead, stepped, evaluated,
                   evaluated_ema, order_generator, augment, batches_per_epoch, run_steps,
                   whiten_bias_steps, low_res_steps, precision,
                   make_scaler(precision, device))  # fmt: skip
