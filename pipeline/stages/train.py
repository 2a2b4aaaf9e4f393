"""Stage 3, train → models/checkpoints/: train `model.name` with the recipe in `train`.

The whole training set lives on the training device as one normalised tensor; each batch is
augmented there (augment.py). Nesterov SGD with its own lr scale for BatchNorm/bias params, a
per-step lr schedule, optional EMA of the weights (timm's ModelEmaV3), bf16 autocast and
`torch.compile` on CUDA. Every `train.checkpoint_every` epochs (and at the last) a checkpoint
with the raw and EMA weights and the epoch's validation accuracy is written. Per-epoch metrics go
through dvclive to metrics/train/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.classes import NUM_CLASSES
from pipeline.config.load import DEFAULT_PARAMS_PATH
from pipeline.config.params import ModelParams, TrainParams
from pipeline.data.prepared import load_dataset_info, load_split
from pipeline.engine import distributed
from pipeline.engine.augment import augment_batch, augment_state, mix_batch
from pipeline.engine.device import autocast, resolve_device
from pipeline.engine.distributed import RANK_SEED_STRIDE, current_world
from pipeline.engine.models import build_model, count_trainable_params, model_config
from pipeline.engine.normalise import to_device_set
from pipeline.engine.tta import evaluate
from pipeline.errors import PipelineError
from pipeline.paths import CHECKPOINT_DIR, PREPARED_DIR, TRAIN_LIVE_DIR
from pipeline.records import resume
from pipeline.records.checkpoint import save_checkpoint
from pipeline.records.resume import StateMismatch, random_states, restore_random_states
from pipeline.reporting import console, training_progress

ETA_PROBE_BATCHES = 3  # batches timed (after one warm-up) for the CPU time estimate
WHITENING_IMAGES = 2000  # training images whose 2×2 patches set airnet's whitening filters


def total_steps(steps_per_epoch: int, params: TrainParams) -> int:
    """Optimizer steps of the whole run: all epochs, or `train.max_steps` if that is fewer."""
    planned = steps_per_epoch * params.epochs
    return min(planned, params.max_steps) if params.max_steps else planned


def run_epochs(steps_per_epoch: int, params: TrainParams) -> int:
    """Epochs that get at least one step (the last may be partial under `train.max_steps`)."""
    return math.ceil(total_steps(steps_per_epoch, params) / steps_per_epoch)


def lr_factor(step: int, steps_per_epoch: int, params: TrainParams) -> float:
    """Multiplier of `train.lr` at optimizer step `step` (0-based) of the run.

    cosine and onecycle span the steps actually run (`total_steps`); multistep counts epochs.
    """
    run_steps = total_steps(steps_per_epoch, params)
    if params.schedule == "multistep":
        epoch = step // steps_per_epoch
        return params.gamma ** sum(epoch >= milestone for milestone in params.milestones)
    if params.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / run_steps))
    if params.schedule == "onecycle":  # linear rise to the peak, then linear fall
        warmup_steps = round(params.warmup_fraction * run_steps)
        if step < warmup_steps:
            fraction = step / warmup_steps
            return params.lr_start_factor + (1 - params.lr_start_factor) * fraction
        fraction = (step - warmup_steps) / max(1, run_steps - 1 - warmup_steps)
        return 1 + (params.lr_end_factor - 1) * fraction
    return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_epochs(last_epoch: int, params: TrainParams) -> set[int]:
    """1-based epochs after which a checkpoint is written: every `checkpoint_every`, and the last."""
    return {*range(params.checkpoint_every, last_epoch + 1, params.checkpoint_every), last_epoch}


def steps_per_epoch(image_count: int, params: TrainParams) -> int:
    """Optimizer steps per epoch; with drop_last a set smaller than one batch is still one step."""
    if params.drop_last:
        return max(1, image_count // params.batch_size)
    return math.ceil(image_count / params.batch_size)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on CUDA), label-smoothed cross-entropy, backward, one SGD step.

    `targets` are class indices or (mixup/cutmix) class probabilities. Returns (loss, logits).
    """
    with autocast(images.device, params.mixed_precision):
        logits = network(images)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=params.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


LOOKAHEAD_EVERY = 5  # steps between Lookahead pulls
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY  # the average's decay at the end of the run


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


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float  # on the augmented (and possibly mixed) batches, against the main label
    val_loss: float
    val_accuracy: float  # raw weights, under train.eval_tta
    learning_rate: float  # of the non-bias params, at the epoch's last step
    images_per_second: float  # training images per second of this epoch's training loop
    seconds: float  # this epoch's training loop, without the validation pass
    val_accuracy_ema: float | None = None  # the EMA weights, when train.ema_decay > 0


def fit(
    model: nn.Module,
    params: TrainParams,
    train_set: tuple[torch.Tensor, torch.Tensor],
    val_set: tuple[torch.Tensor, torch.Tensor],
    normalization: tuple[list[float], list[float]],
    on_epoch: Callable[[EpochStats, nn.Module | None], None],
    progress: Progress | None = None,
    resume_state: dict | None = None,
    save_state: Callable[[int, Callable[[], dict]], None] | None = None,
) -> nn.Module | None:
    """Train `model` in place; `train_set` and `val_set` are normalised images and labels on the model's device.

    `normalization` is the (mean, std) of dataset.json the images were normalised with
    (TrivialAugment undoes it to work on pixels).
    `on_epoch(stats, ema_model)` runs after each epoch's validation (logging, checkpoints);
    `ema_model` is the EMA of the weights (`train.ema_decay` > 0), else None. Data order and
    augmentation follow `params.seed` through their own generators. Returns the EMA model.
    After it, `save_state(epoch, state)` gets a function that builds the whole training state
    (resume.py keeps it); `resume_state`, such a state, continues a run after its epoch exactly
    as if it had never stopped.
    """
    train_images, train_labels = train_set
    device = train_images.device
    world = current_world()  # under torchrun: this rank's share of each batch, rank 0 reports
    if world.size > 1 and (not params.drop_last or params.batch_size % world.size):
        raise PipelineError(  # torchrun started by hand (several machines) skips the params check
            f"train.batch_size: {params.batch_size} must be a multiple of the {world.size} "
            "processes, with train.drop_last: true, so that every rank gets an equal share"
        )
    order_generator = torch.Generator().manual_seed(params.seed)  # the same on every rank
    rank_seed = params.seed + world.rank * RANK_SEED_STRIDE if world.rank else None
    augment = augment_state(train_labels.shape[0], *normalization, params.seed, device, rank_seed)
    if params.sync_batchnorm and world.size > 1:
        if device.type != "cuda":
            raise PipelineError(
                "train.sync_batchnorm: needs CUDA (torch's SyncBatchNorm is GPU-only)"
            )
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # its BatchNorm children, in place
    mixed_precision = params.mixed_precision and device.type == "cuda"
    mixing = params.mixup_alpha > 0 or params.cutmix_alpha > 0
    image_count = train_labels.shape[0]
    batches_per_epoch = steps_per_epoch(image_count, params)
    run_steps = total_steps(batches_per_epoch, params)
    optimizer = make_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, batches_per_epoch, params)
    )
    ema = None
    if params.ema_decay:
        from timm.utils import ModelEmaV3  # only runs that ask for EMA pay for importing timm

        ema = ModelEmaV3(model, decay=params.ema_decay, use_warmup=True)
    lookahead = Lookahead(model, run_steps) if params.lookahead else None
    network = compiled(model, params, device)
    trainer = network  # what the optimizer steps run through
    if world.size > 1:  # DDP averages the gradients over the ranks; evaluation stays plain
        ids = [device.index] if device.type == "cuda" else None
        trainer = compiled(DistributedDataParallel(model, device_ids=ids), params, device)
        network = model
    evaluated_ema = compiled(ema.module, params, device) if ema is not None else None
    batch_task = (
        progress.add_task("batch", total=batches_per_epoch, status="") if progress else None
    )
    step, first_epoch = 0, 1
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            if ema is not None:
                ema.module.load_state_dict(resume_state["ema"])
            if lookahead is not None:
                lookahead.average = {k: v.to(device) for k, v in resume_state["lookahead"].items()}
            order_generator.set_state(resume_state["order_generator"])
            augment.generator.set_state(resume_state["augment_generator"])
            restore_random_states(resume_state["random"])
            step, first_epoch = resume_state["step"], resume_state["epoch"] + 1
            if world.rank > 0:  # the state holds rank 0's streams: other ranks draw their own
                rank_seed = params.seed + world.rank * RANK_SEED_STRIDE + first_epoch
                augment.generator.manual_seed(rank_seed)
                torch.manual_seed(rank_seed)  # dropout
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
            raise StateMismatch(f"{type(error).__name__}: {error}") from None

    def training_state() -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "lookahead": lookahead.average if lookahead is not None else None,
            "order_generator": order_generator.get_state(),
            "augment_generator": augment.generator.get_state(),
            "random": random_states(), "step": step, "epoch": epoch,
        }  # fmt: skip

    for epoch in range(first_epoch, run_epochs(batches_per_epoch, params) + 1):
        model.train()
        epoch_batches = min(batches_per_epoch, run_steps - step)  # fewer: max_steps ends mid-epoch
        images_per_epoch = min(image_count, epoch_batches * params.batch_size)
        if progress is not None:
            progress.reset(batch_task, total=epoch_batches)
        order = torch.randperm(image_count, generator=order_generator).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
        correct = torch.zeros((), device=device)
        epoch_started = time.perf_counter()
        for batch_index in range(epoch_batches):
            indices = order[batch_index * params.batch_size : (batch_index + 1) * params.batch_size]
            indices = world.local_slice(indices) if world.size > 1 else indices
            images = augment_batch(train_images[indices], indices, epoch, params, augment)
            labels = train_labels[indices]
            targets = F.one_hot(labels, NUM_CLASSES).float() if mixing else labels
            if mixing:
                images, targets = mix_batch(
                    images, targets, params.mixup_alpha, params.cutmix_alpha, augment.generator
                )
            loss, logits = optimizer_step(trainer, optimizer, images, targets, params)
            step_lr = optimizer.param_groups[0]["lr"]  # the lr this step used, before the next
            scheduler.step()
            step += 1
            if lookahead is not None:
                lookahead.after_step(step)
            if ema is not None:
                ema.update(model, step=step)
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            if progress is not None:
                progress.update(batch_task, advance=1)
            if epoch == 1 and batch_index == ETA_PROBE_BATCHES and device.type == "cpu":
                seconds_per_batch = (time.perf_counter() - epoch_started) / (ETA_PROBE_BATCHES + 1)
                minutes = seconds_per_batch * run_steps / 60
                console.print(
                    f"[yellow]warning: training on CPU; estimated {minutes:.1f} min for "
                    f"{run_steps} steps (train.device: auto picks a CUDA GPU when present)"
                )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - epoch_started
        if world.size > 1:  # the epoch's loss and accuracy over every rank's share
            for total in (loss_sum, correct):
                dist.all_reduce(total)
        if not world.is_main:  # rank 0 evaluates, logs and saves; the others train on
            continue
        val_accuracy, val_loss = evaluate(
            network, *val_set, params.eval_tta, params.eval_batch_size, mixed_precision
        )
        val_accuracy_ema = None
        if evaluated_ema is not None:
            val_accuracy_ema, _ = evaluate(
                evaluated_ema, *val_set, params.eval_tta, params.eval_batch_size, mixed_precision
            )
        on_epoch(
            EpochStats(
                epoch=epoch,
                train_loss=loss_sum.item() / images_per_epoch,
                train_accuracy=correct.item() / images_per_epoch,
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                learning_rate=step_lr,
                images_per_second=images_per_epoch / seconds,
                seconds=seconds,
                val_accuracy_ema=val_accuracy_ema,
            ),
            ema.module if ema is not None else None,
        )
        if save_state is not None:
            save_state(epoch, training_state)
    return ema.module if ema is not None else None


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
    world = current_world()
    if world.size > 1:  # torchrun's worker: join the others, on this rank's own GPU
        device = distributed.init(world, device.type)
    if device.type == "cuda" and params.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True)  # an op with no deterministic kernel raises
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        console.print(
            "train: deterministic CUDA kernels (train.deterministic): bit-reproducible, slower "
            "(no cuDNN autotuning, no non-deterministic fast paths)"
        )
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:  # x86 CPUs handle subnormal floats in microcode, many times slower; they round to 0
        torch.set_flush_denormal(True)
    info = load_dataset_info(prepared_dir)
    train_split, val_split = (load_split(prepared_dir, name) for name in ("train", "val"))
    train_set = to_device_set(
        train_split["images"], train_split["labels"], info["mean"], info["std"], device
    )
    model = model.to(device, memory_format=torch.channels_last)
    if hasattr(model, "init_whitening"):  # airnet: filters from the training set's patches
        model.init_whitening(train_set[0][:WHITENING_IMAGES])
    if world.rank > 0:  # its own dropout draws (the initial weights come from rank 0 anyway)
        torch.manual_seed(params.seed + world.rank * RANK_SEED_STRIDE)
    return TrainingSetup(
        model=model,
        device=device,
        info=info,
        train_set=train_set,
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
    params_path: Path = DEFAULT_PARAMS_PATH,  # what torchrun's workers read (train.nproc > 1)
) -> None:
    if params.nproc > 1 and not distributed.under_torchrun():
        device_kind = resolve_device(params.device).type
        if device_kind == "cuda" and torch.cuda.device_count() < params.nproc:
            raise PipelineError(
                f"train.nproc: {params.nproc} processes need {params.nproc} GPUs, "
                f"{torch.cuda.device_count()} visible"
            )
        console.print(f"train: starting {params.nproc} processes with torchrun")
        distributed.launch(params.nproc, params_path)  # does not return: torchrun takes over
    world = current_world()
    if world.size > 1:
        distributed.die_with_torchrun()
    main = world.is_main  # only rank 0 writes: checkpoints, metrics, resume state, the console
    if not main:
        console.quiet = True
    from dvclive import Live  # heavy import, only for a real run

    setup = setup_training(model_params, params, prepared_dir)
    model, device, info = setup.model, setup.device, setup.info
    train_set, val_set = setup.train_set, setup.val_set
    mean, std = info["mean"], info["std"]
    trainable = count_trainable_params(model)
    last_epoch = run_epochs(steps_per_epoch(train_set[1].shape[0], params), params)
    save_at = checkpoint_epochs(last_epoch, params)
    console.print(
        f"train: {model_params.name} ({trainable:,} trainable params) on {device}, "
        f"{train_set[1].shape[0]} images, {last_epoch} epochs"
    )
    key = resume.run_key(model_params, params, prepared_dir, device)
    resume_state = None
    if main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir.glob(
            "epoch_*.pt"
        ):  # an earlier run's: select must not see them
            stale.unlink()
        resume.clear(keep=key)  # other configs' states: never resumed, so not kept
        resume_state = resume.load(key)
    if world.size > 1:  # rank 0's state (its disk may be the only one holding it) to all ranks
        shared = [resume_state]
        dist.broadcast_object_list(shared, src=0)
        resume_state = shared[0]
    history: list[dict] = []  # each epoch's stats, logged again by a resumed run
    if resume_state is not None:
        if main:
            for kept in resume.kept_checkpoints(key):
                shutil.copy2(kept, checkpoint_dir / kept.name)
        history = resume_state.pop("history")
        console.print(
            f"train: resuming after epoch {resume_state['epoch']} of {last_epoch} from "
            f"{resume.state_dir(key)} (a run with these inputs stopped there)"
        )
    started = time.perf_counter()
    live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
    with live or contextlib.nullcontext(), training_progress() as progress:
        epoch_task = progress.add_task("epoch", total=last_epoch, status="")

        def log_epoch(stats: dict) -> None:
            for name, value in stats.items():
                if name != "epoch" and value is not None:
                    live.log_metric(name, value)
            live.next_step()

        for stats in history if main else []:
            log_epoch(stats)
            progress.update(epoch_task, advance=1)

        def on_epoch(stats: EpochStats, ema_model: nn.Module | None) -> None:
            history.append(dataclasses.asdict(stats))
            log_epoch(history[-1])
            if stats.epoch in save_at:
                checkpoint = {
                    "model_state": model.state_dict(),
                    "ema_state": ema_model.state_dict() if ema_model is not None else None,
                    "val_accuracy_ema": stats.val_accuracy_ema,
                    "model_config": model_config(model_params),
                    "epoch": stats.epoch,
                    "val_accuracy": stats.val_accuracy,
                    "model_params": trainable,
                    "normalization": {"mean": mean, "std": std},
                    "class_names": info["class_names"],
                    # bit-reproducible from the same inputs: CPU always, CUDA on request
                    "training": {"device": device.type,
                                 "deterministic": device.type == "cpu" or params.deterministic},
                }  # fmt: skip
                save_checkpoint(checkpoint_dir / f"epoch_{stats.epoch:04d}.pt", checkpoint)
            progress.update(
                epoch_task,
                advance=1,
                status=f"loss {stats.train_loss:.3f} acc {stats.train_accuracy:.3f} "
                f"val {stats.val_accuracy:.3f} {stats.images_per_second:,.0f} img/s",
            )

        def save_state(epoch: int, training_state: Callable[[], dict]) -> None:
            if epoch in save_at and epoch < last_epoch:  # after the last, the run is done
                state = training_state() | {"history": history}
                resume.save(key, state, sorted(checkpoint_dir.glob("epoch_*.pt")))

        try:
            fit(
                model, params, train_set, val_set, (mean, std), on_epoch, progress,
                resume_state=resume_state, save_state=save_state,
            )  # fmt: skip
        except StateMismatch as error:
            if main:
                resume.set_aside(key, f"the saved state does not fit this run ({error})")
            raise PipelineError(
                f"{resume.state_dir(key)}: the saved training state does not fit this run and was "
                "set aside; run again to train from the start"
            ) from None
        if main:
            live.log_metric("model_params", trainable, plot=False)
            live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
    if world.size > 1:  # every rank is done before rank 0 reports (and DVC records) the run
        dist.barrier()
        dist.destroy_process_group()
    if main:
        resume.clear(key)
    console.print(f"train: done in {time.perf_counter() - started:.1f} s")
