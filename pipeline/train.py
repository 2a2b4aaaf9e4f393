"""Stage 3, train → models/checkpoints/: train `model.name` with the recipe in `train`.

The whole training set lives on the training device as one normalised tensor; each batch is
cropped and flipped there (augment.py). bf16 autocast on CUDA. Every `train.checkpoint_every`
epochs (and at the last) a checkpoint with the epoch's validation accuracy is written.
Per-epoch metrics go through dvclive to metrics/train/.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.augment import augment_batch, to_device_tensor
from pipeline.checkpoints import save_checkpoint
from pipeline.config import ModelParams, TrainParams
from pipeline.device import autocast, resolve_device
from pipeline.models import build_model, count_trainable_params, model_config
from pipeline.prepare import PREPARED_DIR, load_dataset_info, load_split
from pipeline.reporting import console, training_progress
from pipeline.tta import evaluate, load_eval_set

CHECKPOINT_DIR = Path("models/checkpoints")
LIVE_DIR = Path("metrics/train")
ETA_PROBE_BATCHES = 3  # batches timed (after one warm-up) for the CPU time estimate


def lr_factor(epoch: int, params: TrainParams) -> float:
    """Multiplier of `train.lr` during `epoch` (0-based), stepped once per epoch."""
    if params.schedule == "multistep":
        return params.gamma ** sum(epoch >= milestone for milestone in params.milestones)
    if params.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / params.epochs))
    return 1.0


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def checkpoint_epochs(params: TrainParams) -> set[int]:
    """1-based epochs after which a checkpoint is written: every `checkpoint_every`, and the last."""
    return {
        *range(params.checkpoint_every, params.epochs + 1, params.checkpoint_every),
        params.epochs,
    }


def run(
    model_params: ModelParams,
    params: TrainParams,
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    live_dir: Path = LIVE_DIR,
) -> None:
    from dvclive import Live  # heavy import, only for a real run

    cpu_generator = seed_everything(params.seed)  # before building: initial weights follow the seed
    model = build_model(model_params)  # the budget check comes before loading any data
    trainable = count_trainable_params(model)
    device = resolve_device(params.device)
    model = model.to(device, memory_format=torch.channels_last)
    augment_generator = torch.Generator(device=device).manual_seed(params.seed)
    mixed_precision = params.mixed_precision and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    info = load_dataset_info(prepared_dir)
    train_split, val_split = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    train_images = to_device_tensor(train_split["images"], info["mean"], info["std"], device)
    train_labels = torch.from_numpy(train_split["labels"]).to(device)
    val_images, val_labels = load_eval_set(
        val_split["images"], val_split["labels"], info["mean"], info["std"], device
    )
    image_count = train_labels.shape[0]
    batches_per_epoch = math.ceil(image_count / params.batch_size)

    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum,
        nesterov=params.nesterov, weight_decay=params.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, params))
    save_at = checkpoint_epochs(params)
    console.print(
        f"train: {model_params.name} ({trainable:,} trainable params) on {device}, "
        f"{image_count} images, {params.epochs} epochs of {batches_per_epoch} batches"
    )

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (
        Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live,
        training_progress() as progress,
    ):
        epoch_task = progress.add_task("epoch", total=params.epochs, status="")
        batch_task = progress.add_task("batch", total=batches_per_epoch, status="")
        for epoch in range(1, params.epochs + 1):
            model.train()
            progress.reset(batch_task, total=batches_per_epoch)
            order = torch.randperm(image_count, generator=cpu_generator).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            epoch_started = time.perf_counter()
            for batch_index in range(batches_per_epoch):
                indices = order[
                    batch_index * params.batch_size : (batch_index + 1) * params.batch_size
                ]
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
                progress.update(batch_task, advance=1)
                if epoch == 1 and batch_index == ETA_PROBE_BATCHES and device.type == "cpu":
                    seconds_per_batch = (time.perf_counter() - epoch_started) / (
                        ETA_PROBE_BATCHES + 1
                    )
                    total_minutes = seconds_per_batch * batches_per_epoch * params.epochs / 60
                    console.print(
                        f"[yellow]warning: training on CPU; estimated {total_minutes:.1f} min for "
                        f"{params.epochs} epochs (a CUDA GPU is much faster: train.device: auto picks it)"
                    )
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_seconds = time.perf_counter() - epoch_started
            val_accuracy, val_loss = evaluate(
                model, val_images, val_labels, "none", params.eval_batch_size, mixed_precision
            )
            train_loss, train_accuracy = loss_sum.item() / image_count, correct.item() / image_count
            learning_rate = optimizer.param_groups[0]["lr"]
            scheduler.step()
            for name, value in (
                ("train_loss", train_loss), ("train_accuracy", train_accuracy), ("val_loss", val_loss),
                ("val_accuracy", val_accuracy), ("learning_rate", learning_rate),
                ("images_per_second", image_count / epoch_seconds),
            ):  # fmt: skip
                live.log_metric(name, value)
            if epoch in save_at:
                save_checkpoint(
                    checkpoint_dir / f"epoch_{epoch:04d}.pt",
                    {
                        "model_state": model.state_dict(), "model_config": model_config(model_params),
                        "epoch": epoch, "val_accuracy": val_accuracy, "model_params": trainable,
                        "normalization": {"mean": info["mean"], "std": info["std"]},
                        "class_names": info["class_names"],
                    },
                )  # fmt: skip
            progress.update(
                epoch_task, advance=1,
                status=f"loss {train_loss:.3f} acc {train_accuracy:.3f} val {val_accuracy:.3f} "
                f"{image_count / epoch_seconds:,.0f} img/s",
            )  # fmt: skip
            live.next_step()
        live.log_metric("model_params", trainable, plot=False)
        live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
    console.print(
        f"train: done in {time.perf_counter() - started:.1f} s, last val accuracy {val_accuracy:.4f}"
    )
