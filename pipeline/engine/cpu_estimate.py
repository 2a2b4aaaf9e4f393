"""How long a run on the CPU will take, measured on its first steps; a run `train.device: auto`
fell back to the CPU for is stopped when that is over two hours."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from pipeline.engine.trainer import Trainer
from pipeline.errors import PipelineError
from pipeline.reporting import console

IMAGE_SIDE = 32  # pixels: CIFAR-10's, every step after the low-resolution ones
ETA_PROBE_BATCHES = 3  # the CPU time estimate times the first ETA_PROBE_BATCHES + 1 batches
CPU_PROFILE_HINT_MINUTES = 60  # a longer CPU estimate also names the cpu profile
# train.device: auto fell back to the CPU and the run would take longer than this: stop, and say
# how to get a CPU-sized run or insist (train.device: cpu); an explicit cpu only gets the warning
AUTO_CPU_LIMIT_MINUTES = 120


def probe_cpu_time(trainer: Trainer, epoch_started: float) -> None:
    """After the first epoch's first ETA_PROBE_BATCHES + 1 steps: print the run's estimate, or
    stop a run `auto` put on the CPU that would take too long (every rank, or none)."""
    estimate = torch.tensor(estimated_run_seconds(time.perf_counter() - epoch_started, trainer))
    if trainer.world.size > 1:  # the slowest rank's: every rank stops, or none does
        dist.all_reduce(estimate, op=dist.ReduceOp.MAX)
    minutes = estimate.item() / 60
    check_auto_cpu_estimate(minutes, trainer.run_steps, trainer.params.device)
    text = cpu_estimate_warning(minutes, trainer.run_steps, trainer.params.device)
    console.print(text, style="yellow" if text.startswith("warning") else None)


def estimated_run_seconds(probe_seconds: float, trainer: Trainer) -> float:
    """The whole run's training time from the seconds its first ETA_PROBE_BATCHES + 1 steps
    took. A step at train.low_res_pixels is counted as its share of a 32-pixel step's pixels
    (24 px: 0.56), so a run that starts at low resolution is not estimated at its cheap first
    steps' pace. Benchmark 1's probe measured 0.51 at 24 px: such a run is estimated ~6% short."""
    probed = ETA_PROBE_BATCHES + 1
    low_res_cost = (trainer.params.low_res_pixels / IMAGE_SIDE) ** 2  # unused without low-res steps

    def cost(steps: int) -> float:  # the first `steps` steps, in 32-pixel steps
        low = min(steps, trainer.low_res_steps)
        return low * low_res_cost + (steps - low)

    return probe_seconds / cost(probed) * cost(trainer.run_steps)


def cpu_estimate_warning(minutes: float, steps: int, device_setting: str = "auto") -> str:
    """The estimate of a run on the CPU, in one line; a warning naming the CPU profile as the
    way out only over an hour (a short CPU run, the `cpu` profile's, is a normal run)."""
    where = (
        "no CUDA GPU found (train.device: auto)"
        if device_setting == "auto"
        else "train.device: cpu"
    )
    text = f"train: on the CPU ({where}), estimated {minutes:.1f} min for {steps} steps"
    if minutes > CPU_PROFILE_HINT_MINUTES:
        text = (
            f"warning: {text}; without a GPU, `python -m pipeline profile cpu` trains "
            "the best model this pipeline measured in about 15 minutes on 2 cores (BENCHMARKS.md)"
        )
    return text


def check_auto_cpu_estimate(minutes: float, steps: int, device_setting: str) -> None:
    """Stop a CPU run that `train.device: auto` chose (no GPU found) and that would take over
    AUTO_CPU_LIMIT_MINUTES; `train.device: cpu` is the user's own choice and trains."""
    if device_setting == "auto" and minutes > AUTO_CPU_LIMIT_MINUTES:
        raise PipelineError(
            f"train: no GPU found (train.device: auto), and on this CPU the run's {steps} steps "
            f"would take about {minutes / 60:.1f} h; `python -m pipeline profile cpu` trains the "
            "best CPU-sized model this pipeline measured in about 15 minutes (BENCHMARKS.md), or "
            "set train.device: cpu to train this run on the CPU anyway"
        )
