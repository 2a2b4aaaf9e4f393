"""Stage 3, train → models/checkpoints/: train `model.name` with the recipe in `train`.

The whole training set lives on the training device as one normalised tensor; each batch is
augmented there (engine/augment.py). The loop itself is engine/loop.py's `fit`: Nesterov SGD with
its own lr scale for BatchNorm/bias params, a per-step lr schedule, optional EMA of the weights
(timm's ModelEmaV3), autocast and `torch.compile` as engine/device.py decides for the GPU (or
CPU) at hand, said in one line at the start and kept in each checkpoint. This stage puts the data on the
device, and after each epoch logs the metrics through dvclive to metrics/train/; every
`train.checkpoint_every` epochs (and at the last) it writes a checkpoint with the raw and EMA
weights and the epoch's validation accuracy, and keeps the resume state (records/resume.py), so
a killed run continues where it stopped.
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
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from torch import nn

from pipeline.config.load import DEFAULT_PARAMS_PATH
from pipeline.config.params import TrainParams
from pipeline.data.prepared import load_dataset_info, load_split
from pipeline.engine import distributed
from pipeline.engine.device import Precision, choose_precision, compile_choice, resolve_device
from pipeline.engine.distillation import DistillTargets
from pipeline.engine.distributed import RANK_SEED_STRIDE, current_world
from pipeline.engine.loop import EpochStats, fit
from pipeline.engine.models import (
    build_model,
    count_trainable_params,
    model_config,
)
from pipeline.engine.normalise import normalised, pixel_statistics, to_device_set
from pipeline.engine.schedule import (
    check_milestones,
    is_checkpoint_epoch,
    lr_factor,
    run_epochs,
    steps_per_epoch,
    total_steps,
)
from pipeline.engine.trainer import StateMismatch
from pipeline.errors import PipelineError
from pipeline.models.airnet import WHITENING_IMAGES
from pipeline.models.registry import ModelConfig
from pipeline.paths import CHECKPOINT_DIR, PREPARED_DIR, TRAIN_LIVE_DIR
from pipeline.records import resume
from pipeline.records.checkpoint import Checkpoint
from pipeline.records.plot_csv import write_plot_csv
from pipeline.reporting import console, training_progress

LR_CURVE_NAME = "learning_rate.csv"  # beside dvclive's files: the lr of each step (a DVC plot)
LR_CURVE_POINTS = 2000  # steps written at most: the shape without a 20,000-row file


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainingSetup:
    model: nn.Module  # on `device`, channels_last
    device: torch.device
    info: dict  # dataset.json: class names, mean, std
    train_set: tuple[torch.Tensor, torch.Tensor]  # normalised images, labels on `device`
    val_set: tuple[torch.Tensor, torch.Tensor]
    precision: Precision  # engine/device.py's choice (the trainer makes the same one)
    compiled: tuple[bool, str]  # (torch.compile?, why)


def configure_device(params: TrainParams) -> torch.device:
    """The device to train on (this rank's GPU under torchrun), with its kernel settings."""
    device = resolve_device(params.device)
    world = current_world()
    if world.size > 1:  # torchrun's worker: join the others, on this rank's own GPU
        device = distributed.init(world, device.type, params.collective_timeout_minutes)
    if device.type == "cuda":  # set both ways: an earlier run in this process may have set them
        if params.deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (
            ":4096:8",
            ":16:8",
        ):  # cuBLAS needs a fixed workspace to be deterministic; set before its first use
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(params.deterministic)  # no such kernel: it raises
        torch.backends.cudnn.deterministic = params.deterministic
        torch.backends.cudnn.benchmark = not params.deterministic  # autotuning picks by timing
        if params.deterministic:
            console.print(
                "train: deterministic CUDA kernels (train.deterministic): bit-reproducible, "
                "slower (no cuDNN autotuning, no non-deterministic fast paths)"
            )
    else:  # x86 CPUs handle subnormal floats in microcode, many times slower; they round to 0
        torch.set_flush_denormal(True)
    return device


def setup_training(
    model_params: ModelConfig, params: TrainParams, prepared_dir: Path, device: torch.device,
    extra_images: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainingSetup:  # fmt: skip
    """Seed, build the model (budget checked before any data is loaded) and put the data on
    `device` (configure_device's). `extra_images` (uint8 images, labels) join the training set
    after its own images: a student's custom-test images (stages/distill_round.py)."""
    # decided first: a precision this GPU cannot run stops before any data is loaded
    precision = choose_precision(device, params.mixed_precision, params.autocast_dtype)
    compile_decision = compile_choice(params.compile, device)
    seed_everything(params.seed)  # before building: the initial weights follow the seed
    model = build_model(model_params)
    info = load_dataset_info(prepared_dir)
    train_split, val_split = (load_split(prepared_dir, name) for name in ("train", "val"))
    images, labels = train_split["images"], train_split["labels"]
    if extra_images is not None:
        images = np.concatenate([images, extra_images[0]])
        labels = np.concatenate([labels, extra_images[1].astype(labels.dtype)])
    as_pixels = params.images_on_device == "uint8"
    train_set = to_device_set(images, labels, info["mean"], info["std"], device, as_pixels)
    model = model.to(device, memory_format=torch.channels_last)
    if hasattr(model, "init_whitening"):  # airnet: filters from the training set's patches
        whitening = train_set[0][:WHITENING_IMAGES]
        if as_pixels:
            whitening = normalised(whitening, *pixel_statistics(info["mean"], info["std"], device))
        model.init_whitening(whitening)
    rank = current_world().rank
    if rank > 0:  # its own dropout draws (the initial weights come from rank 0 anyway)
        torch.manual_seed(params.seed + rank * RANK_SEED_STRIDE)
    val_set = to_device_set(
        val_split["images"], val_split["labels"], info["mean"], info["std"], device
    )
    return TrainingSetup(model, device, info, train_set, val_set, precision, compile_decision)


class RunRecorder:
    """What rank 0 does after each epoch: log it (dvclive), write its checkpoint, keep the
    resume state; and, for a resumed run, log the epochs it already did again."""

    def __init__(
        self, setup: TrainingSetup, model_params: ModelConfig, params: TrainParams,
        checkpoint_dir: Path, live, key: str, history: list[dict], progress: Progress,
    ) -> None:  # fmt: skip
        self.setup, self.model_params, self.params = setup, model_params, params
        self.checkpoint_dir, self.live, self.key, self.history = checkpoint_dir, live, key, history
        self.trainable = count_trainable_params(setup.model)
        self.last_epoch = run_epochs(steps_per_epoch(setup.train_set[1].shape[0], params), params)
        self.progress = progress
        self.epoch_task = progress.add_task("epoch", total=self.last_epoch, status="")
        for stats in history:  # a resumed run's epochs so far
            self.log(stats)
            progress.update(self.epoch_task, advance=1)

    def log(self, stats: dict) -> None:
        self.live.step = stats["epoch"]  # dvclive's x axis is the epoch (it counts from 0)
        for name, value in stats.items():
            if name != "epoch" and value is not None:
                self.live.log_metric(name, value)
        self.live.next_step()

    def write_lr_curve(self, live_dir: Path) -> None:
        """The lr of every optimizer step (at most LR_CURVE_POINTS of them, evenly spaced, and the
        last), x in epochs: the schedule's shape, which one point per epoch hides."""
        batches = steps_per_epoch(self.setup.train_set[1].shape[0], self.params)
        steps = total_steps(batches, self.params)
        stride = max(1, math.ceil(steps / LR_CURVE_POINTS))
        write_plot_csv(
            live_dir / LR_CURVE_NAME, ["step", "epoch", "learning_rate"],
            [[step, f"{step / batches:.4f}", f"{self.params.lr * lr_factor(step, batches, self.params):.6g}"]
             for step in sorted({*range(0, steps, stride), steps - 1})],
        )  # fmt: skip

    def checkpoint(self, stats: EpochStats, ema_model: nn.Module | None) -> Checkpoint:
        info, device = self.setup.info, self.setup.device
        return Checkpoint(
            model_state=self.setup.model.state_dict(),
            model_config=model_config(self.model_params), epoch=stats.epoch,
            val_accuracy=stats.val_accuracy,
            normalization={"mean": info["mean"], "std": info["std"]},
            class_names=info["class_names"], model_params=self.trainable,
            # bit-reproducible from the same inputs: CPU always, CUDA on request
            training={"device": device.type,
                      "deterministic": device.type == "cpu" or self.params.deterministic,
                      "precision": self.setup.precision.name,
                      "compiled": self.setup.compiled[0],
                      # CPU float sums split over this many threads: another count, other bits
                      "cpu_threads": torch.get_num_threads()},
            ema_state=ema_model.state_dict() if ema_model is not None else None,
            val_accuracy_ema=stats.val_accuracy_ema,
        )  # fmt: skip

    def on_epoch(self, stats: EpochStats, ema_model: nn.Module | None) -> None:
        self.history.append(dataclasses.asdict(stats))
        self.log(self.history[-1])
        if is_checkpoint_epoch(stats.epoch, self.last_epoch, self.params):
            self.checkpoint(stats, ema_model).save(
                self.checkpoint_dir / f"epoch_{stats.epoch:04d}.pt"
            )
        self.progress.update(
            self.epoch_task,
            advance=1,
            status=f"loss {stats.train_loss:.3f} acc {stats.train_accuracy:.3f} "
            f"val {stats.val_accuracy:.3f} {stats.images_per_second:,.0f} img/s",
        )

    def save_state(self, epoch: int, training_state: Callable[[], dict]) -> None:
        if (
            is_checkpoint_epoch(epoch, self.last_epoch, self.params) and epoch < self.last_epoch
        ):  # after the last, the run is done
            state = training_state() | {"history": self.history}
            resume.save(self.key, state, sorted(self.checkpoint_dir.glob("epoch_*.pt")))


def start_or_resume(key: str, checkpoint_dir: Path, main: bool) -> dict | None:
    """Clear the last run's checkpoints and other configs' states; this config's resume state
    (rank 0's, broadcast to every rank), its kept checkpoints put back, or None."""
    state = None
    if main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir.glob(
            "epoch_*.pt"
        ):  # an earlier run's: select must not see them
            stale.unlink()
        resume.clear(keep=key)  # other configs' states: never resumed, so not kept
        state = resume.load(key)
    if current_world().size > 1:  # rank 0's state (its disk may be the only one holding it)
        shared = [state]
        dist.broadcast_object_list(shared, src=0)
        state = shared[0]
    if state is not None and main:
        for kept in resume.kept_checkpoints(key):
            shutil.copy2(kept, checkpoint_dir / kept.name)
    return state


def launch_under_torchrun(params: TrainParams, params_path: Path, stage: str) -> NoReturn:
    """train.nproc > 1: this stage becomes torchrun running `train.nproc` workers of itself."""
    problem = distributed.nproc_problem(params.nproc, resolve_device(params.device).type)
    if problem:
        raise PipelineError(problem)
    console.print(f"{stage}: starting {params.nproc} processes with torchrun")
    distributed.launch(params.nproc, params_path, stage)


def train_model(
    setup: TrainingSetup, model_params: ModelConfig, params: TrainParams, key: str,
    checkpoint_dir: Path, live_dir: Path, distill: DistillTargets | None = None,
) -> None:  # fmt: skip
    """Train `setup.model` (resuming run `key` where it stopped) into `checkpoint_dir`, logging
    to `live_dir`; every rank calls it, rank 0 writes."""
    from dvclive import Live  # heavy import, only for a real run

    world = current_world()
    main = world.is_main
    resume_state = start_or_resume(key, checkpoint_dir, main)
    history = resume_state.pop("history") if resume_state is not None else []
    started = time.perf_counter()
    live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
    with live or contextlib.nullcontext(), training_progress() as progress:
        recorder = RunRecorder(setup, model_params, params, checkpoint_dir, live, key,
                               history if main else [], progress)  # fmt: skip
        console.print(
            f"train: {model_params.name} ({recorder.trainable:,} trainable params) on "
            f"{setup.device}, {setup.train_set[1].shape[0]} images, {recorder.last_epoch} epochs"
        )
        console.print(
            f"train: {setup.precision.name} ({setup.precision.reason}); {setup.compiled[1]}"
        )
        if resume_state is not None:
            console.print(
                f"train: resuming after epoch {resume_state['epoch']} of {recorder.last_epoch} "
                f"from {resume.state_dir(key)} (a run with these inputs stopped there)"
            )
        normalization = (setup.info["mean"], setup.info["std"])
        try:
            fit(
                setup.model, params, setup.train_set, setup.val_set, normalization,
                recorder.on_epoch, progress, resume_state=resume_state,
                save_state=recorder.save_state, distill=distill,
            )  # fmt: skip
        except StateMismatch as error:
            if main:
                resume.set_aside(key, f"the saved state does not fit this run ({error})")
            raise PipelineError(
                f"{resume.state_dir(key)}: the saved training state does not fit this run and was "
                "set aside; run again to train from the start"
            ) from None
        if main:
            recorder.write_lr_curve(live_dir)
            live.log_metric("model_params", recorder.trainable, plot=False)
            live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
    if world.size > 1:  # every rank is done before rank 0 goes on (and DVC records the run)
        dist.barrier()
    if main:
        resume.clear(key)
    console.print(f"train: done in {time.perf_counter() - started:.1f} s")


def start_workers(params: TrainParams, params_path: Path, stage: str) -> torch.device:
    """This process's device: under torchrun a worker's GPU (the group joined); with
    train.nproc > 1 outside torchrun, the stage becomes torchrun (does not return)."""
    if params.nproc > 1 and not distributed.under_torchrun():
        launch_under_torchrun(params, params_path, stage)
    world = current_world()
    if world.size > 1:
        distributed.die_with_torchrun()
    console.quiet = not world.is_main  # only rank 0 writes: files, metrics, the console
    return configure_device(params)


def finish_workers() -> None:
    if current_world().size > 1:
        # all ranks tear down together: a rank that leaves while another still talks to it can
        # abort in gloo's destructor ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def run(
    model_params: ModelConfig,
    params: TrainParams,
    prepared_dir: Path = PREPARED_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    live_dir: Path = TRAIN_LIVE_DIR,
    params_path: Path = DEFAULT_PARAMS_PATH,  # what torchrun's workers read (train.nproc > 1)
) -> None:
    check_milestones(params)
    device = start_workers(params, params_path, "train")
    setup = setup_training(model_params, params, prepared_dir, device)
    key = resume.run_key(model_params, params, prepared_dir, setup.device)
    train_model(setup, model_params, params, key, checkpoint_dir, live_dir)
    finish_workers()
