"""Stage 3, train → models/checkpoints/: train `model.name` with the recipe in `train`.

The whole training set lives on the training device as one normalised tensor; each batch is
cropped and flipped there (augment.py). bf16 autocast on CUDA. Every `train.checkpoint_every`
epochs (and at the last) a checkpoint with the epoch's validation accuracy is written.
Per-epoch metrics go through dvclive to metrics/train/.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from pipeline.augment import augment_batch, to_device_set
from pipeline.checkpoints import save_checkpoint
from pipeline.config import ModelParams, TrainParams
from pipeline.datasets import load_dataset_info, load_split
from pipeline.device import autocast, resolve_device
from pipeline.models import build_model, count_trainable_params, model_config
from pipeline.paths import CHECKPOINT_DIR, PREPARED_DIR, TRAIN_LIVE_DIR
from pipeline.reporting import console, training_progress
from pipeline.tta import evaluate

ETA_PROBE_BATCHES = 3  # batches timed (after one warm-up) for the CPU time estimate


def lr_factor(epoch: int, params: TrainParams) -> float:
    """Multiplier of `train.lr` during `epoch` (0-based), stepped once per epoch."""
    if params.schedule == "multistep":
        return params.gamma ** sum(epoch >= milestone for milestone in params.milestones)
    if params.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / params.epochs))
    return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_epochs(params: TrainParams) -> set[int]:
    """1-based epochs after which a checkpoint is written: every `checkpoint_every`, and the last."""
    return {
        *range(params.checkpoint_every, params.epochs + 1, params.checkpoint_every),
        params.epochs,
    }


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    images_per_second: float  # training images per second of this epoch's training loop
    seconds: float  # this epoch's training loop, without the validation pass


def fit(
    model: nn.Module,
    params: TrainParams,
    train_set: tuple[torch.Tensor, torch.Tensor],
    val_set: tuple[torch.Tensor, torch.Tensor],
    on_epoch: Callable[[EpochStats], None],
    progress: Progress | None = None,
) -> None:
    """Train `model` in place; `train_set` and `val_set` are normalised images and labels on the model's device.

    `on_epoch` runs after each epoch's validation (logging, checkpoints). Data order and
    augmentation follow `params.seed` through their own generators.
    """
    train_images, train_labels = train_set
    device = train_images.device
    order_generator = torch.Generator().manual_seed(params.seed)
    augment_generator = torch.Generator(device=device).manual_seed(params.seed)
    mixed_precision = params.mixed_precision and device.type == "cuda"
    image_count = train_labels.shape[0]
    batches_per_epoch = math.ceil(image_count / params.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        nesterov=params.nesterov,
        weight_decay=params.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, params))
    batch_task = (
        progress.add_task("batch", total=batches_per_epoch, status="") if progress else None
    )
    for epoch in range(1, params.epochs + 1):
        model.train()
        if progress is not None:
            progress.reset(batch_task, total=batches_per_epoch)
        order = torch.randperm(image_count, generator=order_generator).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
        correct = torch.zeros((), device=device)
        epoch_started = time.perf_counter()
        for batch_index in range(batches_per_epoch):
            indices = order[batch_index * params.batch_size : (batch_index + 1) * params.batch_size]
            images = augment_batch(
                train_images[indices],
                params.crop_padding,
                params.pad_mode,
                params.flip,
                augment_generator,
            )
            labels = train_labels[indices]
            with autocast(device, mixed_precision):
                logits = model(images)
                loss = F.cross_entropy(
                    logits.float(), labels, label_smoothing=params.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            if progress is not None:
                progress.update(batch_task, advance=1)
            if epoch == 1 and batch_index == ETA_PROBE_BATCHES and device.type == "cpu":
                seconds_per_batch = (time.perf_counter() - epoch_started) / (ETA_PROBE_BATCHES + 1)
                minutes = seconds_per_batch * batches_per_epoch * params.epochs / 60
                console.print(
                    f"[yellow]warning: training on CPU; estimated {minutes:.1f} min for "
                    f"{params.epochs} epochs (train.device: auto picks a CUDA GPU when present)"
                )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - epoch_started
        val_accuracy, val_loss = evaluate(
            model, *val_set, "none", params.eval_batch_size, mixed_precision
        )
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        on_epoch(
            EpochStats(
                epoch=epoch,
                train_loss=loss_sum.item() / image_count,
                train_accuracy=correct.item() / image_count,
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                learning_rate=learning_rate,
                images_per_second=image_count / seconds,
                seconds=seconds,
            )
        )


@dataclass(frozen=True)
class TrainingSetup:
    model: nn.Module  # on `device`, channels_last
    device: torch.device
    info: dict  # dataset.json: class names, mean, std
    train_set: tuple[torch.Tensor, torch.Tensor]  # normalised images, labels on `device`
    val_set: tuple[torch.Tensor, torch.Tensor]


def setup_training(
    model_params: ModelParams, params: TrainParams, prepared_dir: Path
) -> TrainingSetup:
    """Seed, build the model (budget checked before any data is loaded) and put the data on the device."""
    seed_everything(params.seed)  # before building: the initial weights follow the seed
    model = build_model(model_params)
    device = resolve_device(params.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = load_dataset_info(prepared_dir)
    train_split, val_split = (load_split(prepared_dir, name) for name in ("train", "val"))
    return TrainingSetup(
        model=model.to(device, memory_format=torch.channels_last),
        device=device,
        info=info,
        train_set=to_device_set(
            train_split["images"], train_split["labels"], info["mean"], info["std"], device
        ),
        val_set=to_device_set(
            val_split["images"], val_split["labels"], info["mean"], info["std"], device
        ),
    )


def run(
    model_params: ModelParams,
    params: TrainParams,
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    live_dir: Path = TRAIN_LIVE_DIR,
) -> None:
    from dvclive import Live  # heavy import, only for a real run

    setup = setup_training(model_params, params, prepared_dir)
    model, device, info = setup.model, setup.device, setup.info
    train_set, val_set = setup.train_set, setup.val_set
    mean, std = info["mean"], info["std"]
    trainable = count_trainable_params(model)
    save_at = checkpoint_epochs(params)
    console.print(
        f"train: {model_params.name} ({trainable:,} trainable params) on {device}, "
        f"{train_set[1].shape[0]} images, {params.epochs} epochs"
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_dir.glob("epoch_*.pt"):  # an earlier run's: select must never see them
        stale.unlink()
    started = time.perf_counter()
    live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    with live, training_progress() as progress:
        epoch_task = progress.add_task("epoch", total=params.epochs, status="")

        def on_epoch(stats: EpochStats) -> None:
            for name, value in dataclasses.asdict(stats).items():
                if name != "epoch":
                    live.log_metric(name, value)
            live.next_step()
            if stats.epoch in save_at:
                checkpoint = {
                    "model_state": model.state_dict(),
                    "model_config": model_config(model_params),
                    "epoch": stats.epoch,
                    "val_accuracy": stats.val_accuracy,
                    "model_params": trainable,
                    "normalization": {"mean": mean, "std": std},
                    "class_names": info["class_names"],
                }
                save_checkpoint(checkpoint_dir / f"epoch_{stats.epoch:04d}.pt", checkpoint)
            progress.update(
                epoch_task,
                advance=1,
                status=f"loss {stats.train_loss:.3f} acc {stats.train_accuracy:.3f} "
                f"val {stats.val_accuracy:.3f} {stats.images_per_second:,.0f} img/s",
            )

        fit(model, params, train_set, val_set, on_epoch, progress)
        live.log_metric("model_params", trainable, plot=False)
        live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
    console.print(f"train: done in {time.perf_counter() - started:.1f} s")
