"""Where a stage runs and how: the device, the precision, whether to compile. Decided here, once,
from what torch and the machine say (`Machine`), which a test fakes to be a T4, a P100 or an
H100 without one.

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
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import PipelineError

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores and cuDNN bf16 convolutions
TRITON_MIN_CAPABILITY = (7, 0)  # torch.compile's GPU code generator supports Volta and newer
# torch's CUDA 12.6 wheels are the last with code for capability < 7.5 (Maxwell, Pascal, Volta);
# CUDA 13 wheels (PyPI's default) start at Turing (7.5) and need driver 580 or newer
LEGACY_CUDA_INDEX, CURRENT_CUDA_INDEX = "cu126", "cu130"
CUDA13_MIN_DRIVER = (580, 0)
CUDA12_MIN_DRIVER = (525, 60)  # CUDA 12.x wheels under minor-version compatibility
OLDEST_CUDA12_CAPABILITY = (5, 0)
CUDA11_TORCH = (
    "torch==2.7.1 torchvision==0.22.1"  # CUDA 11.8 (drivers 450.80+): the suite passes on it
)
NVIDIA_SMI_TIMEOUT_SECONDS = 15
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")  # present wherever the driver is loaded


@dataclass(frozen=True)
class Gpu:
    name: str  # "Tesla T4"
    capability: tuple[int, int] | None  # (7, 5); None: an nvidia-smi too old to say
    memory_gib: float | None


@dataclass(frozen=True)
class Machine:
    """What decides device, precision and compile; `this_machine()` reads the real one."""

    cuda_available: bool  # torch.cuda.is_available()
    gpus: tuple[Gpu, ...]  # torch's view when CUDA is available, else nvidia-smi's
    arch_list: tuple[str, ...]  # torch.cuda.get_arch_list(): the GPU code in this torch build
    torch_cuda: str | None  # torch.version.cuda; None: a CPU-only build
    driver: str | None  # the NVIDIA driver's version, when one is installed
    triton: bool  # torch.compile's GPU backend is importable
    gpus_hidden: bool = False  # CUDA_VISIBLE_DEVICES is "" or -1: the user asked for no GPU


def _nvidia_smi_gpus() -> tuple[tuple[Gpu, ...], str | None]:
    """(GPUs, driver version) as nvidia-smi lists them; empty when it is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return (), None
    for fields in (
        "name,driver_version,memory.total,compute_cap",
        "name,driver_version,memory.total",
    ):
        try:
            result = subprocess.run(
                ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return (), None
        if result.returncode == 0:
            break
    else:
        return (), None
    gpus, driver = [], None
    for line in result.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 3:
            continue
        capability = _version(parts[3], 2) if len(parts) > 3 else None
        memory = float(parts[2]) / 1024 if parts[2].replace(".", "", 1).isdigit() else None
        gpus.append(Gpu(parts[0], capability, memory))  # type: ignore[arg-type]
        driver = parts[1]
    return tuple(gpus), driver


def _version(text: str | None, parts: int) -> tuple[int, ...] | None:
    """'525.60.13' → (525, 60) for parts=2; None when it is not a version."""
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers[:parts]) if len(numbers) >= parts else None


def _driver_from_proc() -> str | None:
    try:
        found = re.search(
            r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", DRIVER_VERSION_FILE.read_text()
        )
    except OSError:
        return None
    return found.group(1) if found else None


@functools.cache
def this_machine() -> Machine:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    try:
        from torch.utils._triton import has_triton

        triton = has_triton()
    except ImportError:
        triton = False
    arch_list = tuple(torch.cuda.get_arch_list()) if torch.version.cuda else ()
    if torch.cuda.is_available():
        gpus = tuple(
            Gpu(props.name, (props.major, props.minor), props.total_memory / 2**30)
            for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
        )
        driver = _driver_from_proc()
        return Machine(True, gpus, arch_list, torch.version.cuda, driver, triton, hidden)
    gpus, driver = _nvidia_smi_gpus()
    driver = driver or _driver_from_proc()
    return Machine(False, gpus, arch_list, torch.version.cuda, driver, triton, hidden)


def build_runs_on(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Does a torch build with `arch_list` have code for a GPU of `capability`? Binary code
    (sm_XY) runs on the same major version at an equal or higher minor; PTX (compute_XY) is
    compiled on the fly for any GPU at or above it."""
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        digits = digits.rstrip("af")  # sm_90a, sm_100f: the family's own variants
        if not digits.isdigit() or len(digits) < 2:
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


def install_command(machine: Machine) -> str:
    """The pip line that gives this machine a torch build its GPU and driver can run, or what
    to do instead (the versions are this environment's, so nothing else moves)."""
    torch_version = torch.__version__.split("+")[0]
    try:
        vision = f" torchvision=={importlib.metadata.version('torchvision').split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        vision = ""
    capability = min((gpu.capability for gpu in machine.gpus if gpu.capability), default=None)
    driver = _version(machine.driver, 2)
    if capability is not None and capability < OLDEST_CUDA12_CAPABILITY:
        return "no current PyTorch build runs on this GPU (compute capability below 5.0): use a newer GPU or train.device: cpu"
    legacy = (capability is not None and capability < (7, 5)) or (
        driver is not None and driver < CUDA13_MIN_DRIVER
    )
    if legacy and driver is not None and driver < CUDA12_MIN_DRIVER:
        return (
            f"pip install --force-reinstall {CUDA11_TORCH} --index-url "
            f"https://download.pytorch.org/whl/cu118 (the last torch built for drivers older "
            f"than {'.'.join(map(str, CUDA12_MIN_DRIVER))}; this one is {machine.driver}), or "
            "update the driver (on a cluster, ask for a node or module with a newer one)"
        )
    index = LEGACY_CUDA_INDEX if legacy else CURRENT_CUDA_INDEX
    return (
        f"pip install --force-reinstall torch=={torch_version}{vision} "
        f"--index-url https://download.pytorch.org/whl/{index}"
    )


def _gpu_words(machine: Machine, gpu: Gpu | None = None) -> str:
    gpu = gpu or (machine.gpus[0] if machine.gpus else None)
    if gpu is None:
        return "an NVIDIA GPU"
    capability = (
        f"compute capability {gpu.capability[0]}.{gpu.capability[1]}"
        if gpu.capability
        else "compute capability unknown"
    )
    return f"{gpu.name} ({capability})"


def unusable_gpu_problem(machine: Machine) -> str | None:
    """Why torch cannot use this machine's NVIDIA GPU (None: it can, or there is none). A GPU
    counts when torch or nvidia-smi lists one: a loaded driver alone is also what a CPU-only job
    on a cluster's GPU node sees (the scheduler hides the devices), and that job should train."""
    if machine.gpus_hidden or not machine.gpus:
        return None
    build = f"CUDA {machine.torch_cuda} build" if machine.torch_cuda else "CPU-only build"
    torch_words = f"torch {torch.__version__} is a {build}"
    if machine.cuda_available:
        unsupported = [
            gpu for gpu in machine.gpus
            if gpu.capability and not build_runs_on(gpu.capability, machine.arch_list)
        ]  # fmt: skip
        if not unsupported:
            return None
        return (
            f"{_gpu_words(machine, unsupported[0])} is not in {torch_words}'s architectures "
            f"({', '.join(machine.arch_list)})"
        )
    if machine.torch_cuda is None:
        return f"{_gpu_words(machine)} is here, but {torch_words}"
    return (
        f"{_gpu_words(machine)} and NVIDIA driver {machine.driver or '(version unknown)'} are "
        f"here, but {torch_words} and cannot use it (a driver too old for the build?)"
    )


def resolve_device(
    name: str, key: str = "train.device", machine: Machine | None = None
) -> torch.device:
    """`auto` → the GPU when torch can use it, else the CPU; a GPU that is here but unusable
    stops with the fix (never a silent CPU run). `cuda` without a usable GPU is an error."""
    if name == "cpu":
        return torch.device("cpu")
    machine = machine or this_machine()
    problem = unusable_gpu_problem(machine)
    if problem is not None:
        raise PipelineError(
            f"params: {key} is '{name}': {problem}; fix: {install_command(machine)} "
            f"(or set {key}: cpu to train on the CPU)"
        )
    if name == "cuda" and not machine.cuda_available:
        raise PipelineError(f"params: {key} is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if machine.cuda_available else "cpu")
    return torch.device(name)


def _capability(device: torch.device, machine: Machine) -> tuple[int, int] | None:
    if device.type != "cuda" or not machine.gpus:
        return None
    index = device.index or 0
    return machine.gpus[min(index, len(machine.gpus) - 1)].capability


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
    machine = machine or this_machine()
    capability = _capability(device, machine)
    native_bf16 = capability is None or capability >= NATIVE_BF16_CAPABILITY
    gpu = _gpu_words(machine)
    if requested == "bfloat16" and not native_bf16:
        raise PipelineError(
            f"params: {key} is bfloat16, which {gpu} has no native support for (8.0 and up): it "
            f"would run many times slower; set {key}: auto (float16 with a loss scaler here)"
        )
    if requested == "auto":
        chosen = "bfloat16" if native_bf16 else "float16"
        why = (
            "native bfloat16"
            if native_bf16
            else "no native bfloat16 below 8.0: float16 with a loss scaler"
        )
        return Precision(chosen, f"auto on {gpu}: {why}")
    return Precision(requested, f"{requested} on {gpu}, as {key} asks")


def compile_choice(
    setting: str, device: torch.device, machine: Machine | None = None
) -> tuple[bool, str]:
    """(compile?, why) for `train.compile`: auto compiles on a GPU Triton supports."""
    if setting != "auto":
        return setting == "always", f"train.compile: {setting}"
    if device.type != "cuda":
        return False, "eager on the CPU (train.compile: auto compiles on GPUs only)"
    machine = machine or this_machine()
    capability = _capability(device, machine)
    if capability is not None and capability < TRITON_MIN_CAPABILITY:
        return False, (
            f"eager: {_gpu_words(machine)} is below Triton's 7.0, so torch.compile cannot run"
        )
    if not machine.triton:
        return (
            False,
            "eager: Triton is not installed, so torch.compile cannot run (pip install triton)",
        )
    return True, "torch.compile (train.compile: auto, on a GPU Triton supports)"
