"""Where a stage runs and how: the device, the precision, whether to compile. Decided here, once,
from what torch and the machine say (engine/gpu.py's `Machine`, which a test fakes to be a T4,
a P100 or an H100 without one).

- Device: `auto` takes a GPU torch can use. A GPU torch cannot use (its architecture missing
  from the build, a driver too old for the build, a CPU-only build) stops with one line naming
  the GPU and the install command that fixes it, never a silent CPU run; so does `cuda` without
  a GPU. `cpu` is always honoured.
- Precision (`train.autocast_dtype`, read by every stage that runs the model): `auto` is
  bfloat16 where the GPU has it natively (compute capability 8.0 and up), float16 with a loss
  scaler below that (a T4, a V100: bf16 there runs without cuDNN and tensor cores, many times
  slower), and float32 on the CPU (no fast half precision on most CPUs). An explicit dtype is
  used on any device, the CPU included (so a CPU test runs the lines a T4 runs), except
  bfloat16 on a GPU below 8.0, which is refused with the setting that works.
- Compile (`train.compile: auto`): on a GPU of capability 7.0 and up with Triton installed
  (Triton's floor); otherwise eager, said in one line.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.engine import gpu
from pipeline.engine.gpu import Gpu, Machine, gpu_words, unusable_gpu_problem
from pipeline.errors import PipelineError

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores and cuDNN bf16 convolutions
TRITON_MIN_CAPABILITY = (7, 0)  # torch.compile's GPU code generator supports Volta and newer


def resolve_device(
    name: str, key: str = "train.device", machine: Machine | None = None
) -> torch.device:
    """`auto` → the GPU when torch can use it, else the CPU; a GPU that is here but unusable
    stops with the fix (never a silent CPU run). `cuda` without a usable GPU is an error."""
    if name == "cpu":
        return torch.device("cpu")
    machine = machine or gpu.this_machine()  # one place to fake it: gpu.this_machine
    problem = unusable_gpu_problem(machine)
    if problem is not None:
        raise PipelineError(
            f"params: {key} is '{name}': {problem[0]}; fix: {problem[1]} "
            f"(or set {key}: cpu to train on the CPU)"
        )
    if name == "cuda" and not machine.cuda_available:
        raise PipelineError(
            f"params: {key} is 'cuda' but no CUDA device is available; set {key}: auto (or cpu)"
        )
    if name == "auto":
        return torch.device("cuda" if machine.cuda_available else "cpu")
    return torch.device(name)


def _gpu_of(device: torch.device, machine: Machine, whole_run: bool = False) -> Gpu | None:
    """`device`'s GPU; with `whole_run` under data parallelism across several GPUs, the least
    capable one: every rank must train in one precision (one rank's loss scaler would scale
    the gradients all ranks average)."""
    if device.type != "cuda" or not machine.gpus:
        return None
    if whole_run and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        known = [card for card in machine.gpus if card.capability]
        return min(known, key=lambda card: card.capability, default=machine.gpus[0])
    return machine.gpus[min(device.index or 0, len(machine.gpus) - 1)]


@dataclass(frozen=True)
class Precision:
    """The dtype a stage's forward passes run in, and whether gradients need loss scaling."""

    name: str  # "bfloat16", "float16" or "float32"
    reason: str  # why, for the one line a stage prints

    @property
    def dtype(self) -> torch.dtype | None:  # autocast's; None: float32, no autocast
        return AUTOCAST_DTYPES.get(self.name)

    @property
    def loss_scaling(self) -> bool:  # fp16's narrow range: small gradients underflow unscaled
        return self.name == "float16"

    @property
    def matmul_dtype(self) -> torch.dtype:  # Muon's orthogonalisation: the autocast dtype's
        return self.dtype or torch.float32

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to this dtype on `device` (BatchNorm stays float32 under it); float32: none."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


FLOAT32 = Precision("float32", "mixed precision off")


def choose_precision(
    device: torch.device, mixed_precision: bool, requested: str,
    key: str = "train.autocast_dtype", machine: Machine | None = None,
) -> Precision:  # fmt: skip
    """The precision for `device` (module docstring); bfloat16 asked of a GPU without it is an
    error naming `key` and what to set."""
    if not mixed_precision:
        return FLOAT32
    if device.type != "cuda":
        if requested == "auto":
            return Precision(
                "float32", "auto on the CPU: float32 (half precision is slower on most CPUs)"
            )
        return Precision(requested, f"{requested} autocast on the CPU, as {key} asks")
    machine = machine or gpu.this_machine()  # one place to fake it: gpu.this_machine
    own = _gpu_of(device, machine, whole_run=True)
    capability = own.capability if own else None
    native_bf16 = capability is None or capability >= NATIVE_BF16_CAPABILITY
    gpu_name = gpu_words(machine, own)
    if requested == "bfloat16" and not native_bf16:
        raise PipelineError(
            f"params: {key} is bfloat16, which {gpu_name} has no native support for (8.0 and up): it "
            f"would run many times slower; set {key}: auto (float16 with a loss scaler here)"
        )
    if requested == "auto":
        chosen = "bfloat16" if native_bf16 else "float16"
        why = (
            "native bfloat16"
            if native_bf16
            else "no native bfloat16 below 8.0: float16 with a loss scaler"
        )
        return Precision(chosen, f"auto on {gpu_name}: {why}")
    return Precision(requested, f"{requested} on {gpu_name}, as {key} asks")


def compile_choice(
    setting: str, device: torch.device, machine: Machine | None = None
) -> tuple[bool, str]:
    """(compile?, why) for `train.compile`: auto compiles on a GPU Triton supports."""
    if setting != "auto":
        return setting == "always", f"train.compile: {setting}"
    if device.type != "cuda":
        return False, "eager on the CPU (train.compile: auto compiles on GPUs only)"
    machine = machine or gpu.this_machine()  # one place to fake it: gpu.this_machine
    own = _gpu_of(device, machine)
    if own is not None and own.capability is not None and own.capability < TRITON_MIN_CAPABILITY:
        return False, (
            f"eager: {gpu_words(machine, own)} is below Triton's 7.0, so torch.compile cannot run"
        )
    if not machine.triton:
        return (
            False,
            "eager: Triton is not installed, so torch.compile cannot run (pip install triton)",
        )
    return True, "torch.compile (train.compile: auto, on a GPU Triton supports)"
