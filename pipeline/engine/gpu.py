"""What this machine's GPUs are, and whether torch can use them: the facts engine/device.py
decides from (`Machine`, which a test fakes to be a T4, a P100 or an H100 without one), and,
when torch cannot use a GPU that is there, why and the command that fixes it.

Torch's own view when CUDA (or ROCm) works; nvidia-smi's and the driver's when it does not.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

# torch 2.14's CUDA 12.6 wheels are the last with code for capability < 7.5 (Maxwell, Pascal,
# Volta); its CUDA 13 wheels (PyPI's default) run Turing (7.5) to Blackwell and need driver 580
LEGACY_CUDA_INDEX, CURRENT_CUDA_INDEX = "cu126", "cu130"
LEGACY_MAX_CAPABILITY = (9, 0)  # the newest GPU the CUDA 12.6 wheels have code for (Hopper)
CUDA13_MIN_DRIVER = (580, 0)
CUDA12_MIN_DRIVER = (525, 60)  # CUDA 12.x wheels under minor-version compatibility
CUDA11_MIN_DRIVER = (450, 80)
OLDEST_CUDA12_CAPABILITY = (5, 0)
CUDA11_TORCH = "torch==2.7.1 torchvision==0.22.1"  # CUDA 11.8: the suite passes on it
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
    torch_cuda: str | None  # torch.version.cuda; None: a CPU-only (or ROCm) build
    driver: str | None  # the NVIDIA driver's version, when one is installed
    triton: bool  # torch.compile's GPU backend is importable
    gpus_hidden: bool = False  # CUDA_VISIBLE_DEVICES is "" or -1: the user asked for no GPU
    torch_hip: str | None = None  # torch.version.hip: a ROCm build (AMD GPUs, same torch.cuda)
    cuda_warning: str | None = None  # what torch said when CUDA would not start


def _version(text: str | None, parts: int) -> tuple[int, ...] | None:
    """'525.60.13' → (525, 60) for parts=2; None when it is not a version."""
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers[:parts]) if len(numbers) >= parts else None


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
                capture_output=True, text=True, errors="replace",
                timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
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


def _driver_from_proc() -> str | None:
    try:
        text = DRIVER_VERSION_FILE.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
    return found.group(1) if found else None


@functools.cache
def this_machine() -> Machine:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    try:
        from torch.utils._triton import has_triton

        triton = has_triton()
    except ImportError:
        triton = False
    gpu_build = torch.version.cuda or getattr(torch.version, "hip", None)
    arch_list = tuple(torch.cuda.get_arch_list()) if gpu_build else ()
    # why CUDA would not start, in torch's words (it warns instead of raising)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    facts = {
        "arch_list": arch_list, "torch_cuda": torch.version.cuda, "triton": triton,
        "gpus_hidden": hidden, "torch_hip": getattr(torch.version, "hip", None),
    }  # fmt: skip
    if available:
        gpus = tuple(
            Gpu(props.name, (props.major, props.minor), props.total_memory / 2**30)
            for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
        )
        return Machine(True, gpus, driver=_driver_from_proc(), **facts)
    gpus, driver = _nvidia_smi_gpus()
    warning = next((str(w.message).splitlines()[0] for w in caught if str(w.message).strip()), None)
    return Machine(False, gpus, driver=driver or _driver_from_proc(), cuda_warning=warning, **facts)


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


def gpu_words(machine: Machine, gpu: Gpu | None = None) -> str:
    gpu = gpu or (machine.gpus[0] if machine.gpus else None)
    if gpu is None:
        return "an NVIDIA GPU"
    if gpu.capability is None:
        return f"{gpu.name} (compute capability unknown)"
    return f"{gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]})"


def _build_min_driver(torch_cuda: str | None) -> tuple[int, ...] | None:
    major = _version(torch_cuda, 1)
    return {(11,): CUDA11_MIN_DRIVER, (12,): CUDA12_MIN_DRIVER, (13,): CUDA13_MIN_DRIVER}.get(major)


def _pip_line(packages: str, index: str) -> str:
    # uninstall first: --force-reinstall would reinstall numpy and the rest from the torch index
    return (
        f"pip uninstall -y torch torchvision && pip install {packages} "
        f"--index-url https://download.pytorch.org/whl/{index}"
    )


def install_command(machine: Machine) -> str:
    """The pip line that gives this machine a torch build its GPUs and driver can run, or what
    to do instead (the versions are this environment's, so nothing else moves)."""
    try:
        vision = f" torchvision=={importlib.metadata.version('torchvision').split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        vision = ""
    packages = f"torch=={torch.__version__.split('+')[0]}{vision}"
    capabilities = [gpu.capability for gpu in machine.gpus if gpu.capability]
    lowest, highest = min(capabilities, default=None), max(capabilities, default=None)
    driver = _version(machine.driver, 2)
    if lowest is not None and lowest < OLDEST_CUDA12_CAPABILITY:
        return "no current PyTorch build runs a GPU below compute capability 5.0: use another GPU or train.device: cpu"
    needs_legacy = lowest is not None and lowest < (7, 5)
    if needs_legacy and highest is not None and highest > LEGACY_MAX_CAPABILITY:
        return (
            "no one torch build runs all these GPUs (some below 7.5, some above 9.0): hide the "
            "others with CUDA_VISIBLE_DEVICES=<the index of one kind>, as nvidia-smi numbers them"
        )
    if driver is not None and driver < CUDA12_MIN_DRIVER:
        if driver >= CUDA11_MIN_DRIVER and (highest is None or highest <= LEGACY_MAX_CAPABILITY):
            return (
                f"{_pip_line(CUDA11_TORCH, 'cu118')} (the last torch built for drivers older "
                f"than 525.60; this one is {machine.driver}), or update the driver"
            )
        return f"update the NVIDIA driver (it is {machine.driver}; on a cluster, ask for a node or module with a newer one)"
    if (
        driver is not None
        and driver < CUDA13_MIN_DRIVER
        and highest is not None
        and highest > LEGACY_MAX_CAPABILITY
    ):
        return f"update the NVIDIA driver to 580 or newer (it is {machine.driver}): only CUDA 13 builds of torch {packages.split('==')[1].split()[0]} have code for {gpu_words(machine, machine.gpus[capabilities.index(highest)])}"
    legacy = needs_legacy or (driver is not None and driver < CUDA13_MIN_DRIVER)
    return _pip_line(packages, LEGACY_CUDA_INDEX if legacy else CURRENT_CUDA_INDEX)


def unusable_gpu_problem(machine: Machine) -> tuple[str, str] | None:
    """(why torch cannot use this machine's GPU, the fix), or None: it can, or there is none.
    A GPU counts when torch or nvidia-smi lists one: a loaded driver alone is also what a
    CPU-only job on a cluster's GPU node sees (the scheduler hides the devices); it trains."""
    if machine.gpus_hidden or not machine.gpus:
        return None
    if machine.cuda_available:
        if machine.torch_hip:  # ROCm: torch checks its own architectures (gfx…)
            return None
        unsupported = [
            gpu for gpu in machine.gpus
            if gpu.capability and not build_runs_on(gpu.capability, machine.arch_list)
        ]  # fmt: skip
        if not unsupported:
            return None
        return (
            f"{gpu_words(machine, unsupported[0])} is not in torch {torch.__version__}'s "
            f"architectures ({', '.join(machine.arch_list)})", install_command(machine),
        )  # fmt: skip
    if machine.torch_cuda is None and not machine.torch_hip:
        return (
            f"{gpu_words(machine)} is here, but torch {torch.__version__} is a CPU-only build",
            install_command(machine),
        )
    here = (
        f"{gpu_words(machine)} and NVIDIA driver {machine.driver or '(version unknown)'} are here"
    )
    needed, driver = _build_min_driver(machine.torch_cuda), _version(machine.driver, 2)
    if needed is not None and driver is not None and driver < needed:
        too_old = f"torch {torch.__version__} (CUDA {machine.torch_cuda}) needs driver {'.'.join(map(str, needed))} or newer"
        return f"{here}, but {too_old}", install_command(machine)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    said = f" (torch: {machine.cuda_warning})" if machine.cuda_warning else ""
    return (
        f"{here}, but torch {torch.__version__} cannot start CUDA{said}",
        (
            f"check CUDA_VISIBLE_DEVICES={visible!r} against nvidia-smi's indices, "
            if visible
            else ""
        )
        + "and, in a container, that it was started with the GPU (docker --gpus all)",
    )
