"""Data-parallel training with torchrun: which rank this process is, and how a run is launched.

`train.nproc` > 1 makes `python -m pipeline train` start itself again under torchrun
(`python -m torch.distributed.run --standalone --nproc_per_node N`), one process per device:
NCCL on CUDA (rank r uses cuda:LOCAL_RANK), gloo on CPU. A multi-node run starts the same
command under torchrun on every machine with rendezvous flags (README, *Scaling out*); this
module then finds the ranks in torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE).

`train.batch_size` stays the global batch of one optimizer step: each rank takes its own
contiguous `batch_size / nproc` slice of every batch of the epoch's shared permutation, and DDP
averages the gradients, so the recipe (lr, schedule, steps per epoch) is the same at any nproc.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies
RANK_SEED_STRIDE = 1_000_003  # rank r's augmentation generator: seed + r × this (rank 0: seed)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (equal shares: drop_last is required)."""
        share = batch.shape[0] // self.size
        return batch[self.rank * share : (self.rank + 1) * share]


def current_world() -> World:
    """The ranks torchrun set up (its environment), or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                     int(os.environ["WORLD_SIZE"]))  # fmt: skip
    return World()


def nproc_problem(nproc: int, device_kind: str) -> str | None:
    """train.nproc processes on CUDA need as many visible GPUs (one each)."""
    if nproc > 1 and device_kind == "cuda" and torch.cuda.device_count() < nproc:
        visible = torch.cuda.device_count()
        return (
            f"train.nproc: {nproc} processes need {nproc} GPUs, {visible} visible; set "
            f"train.nproc: {max(visible, 1)}"
        )
    return None


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def launch(nproc: int, params_path: Path, stage: str = "train") -> NoReturn:
    """Become torchrun running `python -m pipeline STAGE` as `nproc` workers on this machine.

    The process is replaced (exec), so a signal that stops the stage (`dvc queue kill`, Ctrl-C)
    reaches torchrun, which stops its workers, and torchrun's exit status is the stage's.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "pipeline", "--params", str(params_path), stage,
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def die_with_torchrun() -> None:
    """Linux: this worker is killed when its torchrun agent dies, even by SIGKILL.

    torchrun forwards SIGTERM and SIGINT to its workers, but a killed agent would leave them
    running, still writing checkpoints under the next run's feet.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: no such guard
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before the guard was set
        os.kill(os.getpid(), signal.SIGKILL)


def init(world: World, device_kind: str, timeout_minutes: float) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); return this rank's device. A
    collective that waits `timeout_minutes` (train.collective_timeout_minutes) fails the run."""
    if world.size == 1:
        raise ValueError("init is for multi-process runs")
    if device_kind == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():  # the others wait while rank 0 evaluates and saves
        dist.init_process_group(
            "nccl" if device_kind == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return device
