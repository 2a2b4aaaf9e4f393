"""Device, precision and compile on the GPUs students have, decided on this CPU by faking what
torch and the machine report (engine/device.py's `Machine`): a P100, a V100, a T4, an A100, an
L4 and an H100; a driver too old for the build; a CPU-only build beside a GPU."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import seed_train

from pipeline.engine import gpu
from pipeline.engine.cpu_estimate import check_auto_cpu_estimate
from pipeline.engine.device import choose_precision, compile_choice, resolve_device
from pipeline.engine.gpu import Gpu, Machine, build_runs_on
from pipeline.errors import PipelineError

CU130_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")  # torch 2.14.1+cu130's
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CUDA = torch.device("cuda")


def machine_with(
    name: str, capability: tuple[int, int], arch_list: tuple[str, ...] = CU130_ARCHS,
    cuda_available: bool = True, driver: str | None = "580.65.06", torch_cuda: str | None = "13.0",
) -> Machine:  # fmt: skip
    return Machine(cuda_available, (Gpu(name, capability, 15.0),), arch_list, torch_cuda, driver,
                   triton=True)  # fmt: skip


def refusal(machine: Machine, setting: str = "auto") -> str:
    """The one-line error `resolve_device` stops with on `machine`."""
    with pytest.raises(PipelineError) as refused:
        resolve_device(setting, machine=machine)
    return str(refused.value)


# (GPU, capability, auto's dtype, loss scaling, compiles) for the cards students train on
STUDENT_GPUS = [
    ("Tesla P100-PCIE-16GB", (6, 0), "float16", True, False),  # Kaggle: below Triton's 7.0
    ("Tesla V100-SXM2-16GB", (7, 0), "float16", True, True),  # a cluster
    ("Tesla T4", (7, 5), "float16", True, True),  # Colab's free tier, Kaggle's 2×T4
    ("NVIDIA A100-SXM4-40GB", (8, 0), "bfloat16", False, True),
    ("NVIDIA L4", (8, 9), "bfloat16", False, True),
    ("NVIDIA H100 80GB HBM3", (9, 0), "bfloat16", False, True),
]


@pytest.mark.parametrize(("name", "capability", "dtype", "scaled", "compiles"), STUDENT_GPUS)
def test_auto_precision_and_compile_per_student_gpu(
    name: str, capability: tuple[int, int], dtype: str, scaled: bool, compiles: bool
) -> None:
    machine = machine_with(name, capability, CU126_ARCHS)
    precision = choose_precision(CUDA, True, "auto", machine=machine)
    assert (precision.name, precision.loss_scaling) == (dtype, scaled)
    assert precision.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    assert name in precision.reason
    assert compile_choice("auto", CUDA, machine)[0] is compiles
    assert choose_precision(CUDA, False, "auto", machine=machine).name == "float32"
    assert choose_precision(CUDA, True, "float16", machine=machine).loss_scaling


@pytest.mark.parametrize(("name", "capability"), [(g[0], g[1]) for g in STUDENT_GPUS[:3]])
def test_bfloat16_asked_of_a_gpu_without_it_is_refused_with_the_setting_that_works(
    name: str, capability: tuple[int, int]
) -> None:
    machine = machine_with(name, capability, CU126_ARCHS)
    with pytest.raises(PipelineError) as refused:
        choose_precision(CUDA, True, "bfloat16", machine=machine)
    message = str(refused.value)
    assert f"{name} (compute capability {capability[0]}.{capability[1]})" in message
    assert "train.autocast_dtype: auto (float16 with a loss scaler here)" in message
    assert "\n" not in message


def test_on_the_cpu_auto_is_float32_and_an_explicit_dtype_autocasts_for_real() -> None:
    cpu = torch.device("cpu")
    assert choose_precision(cpu, True, "auto").dtype is None
    fp16 = choose_precision(cpu, True, "float16")
    assert fp16.loss_scaling and fp16.matmul_dtype == torch.float16
    with fp16.autocast(cpu):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float16
    assert choose_precision(cpu, True, "bfloat16").dtype == torch.bfloat16
    assert compile_choice("auto", cpu) == (False, compile_choice("auto", cpu)[1])


def test_muon_orthogonalises_in_the_runs_precision() -> None:
    from test_engine import SMALL_MODELS

    from pipeline.config.load import load_profile
    from pipeline.engine.models import build_model
    from pipeline.engine.optim import make_optimizer

    params = dataclasses.replace(
        load_profile("fast").train, optimizer="muon", muon_lr=0.05, muon_momentum=0.6
    )
    model = build_model(SMALL_MODELS["airnet"])
    fp16 = choose_precision(torch.device("cpu"), True, "float16")
    assert make_optimizer(model, params, fp16).orthogonal_dtype == torch.float16
    assert make_optimizer(model, params).orthogonal_dtype == torch.float32


def test_compile_is_eager_without_triton_and_says_why() -> None:
    machine = dataclasses.replace(machine_with("NVIDIA GeForce RTX 3060", (8, 6)), triton=False)
    compiles, why = compile_choice("auto", CUDA, machine)
    assert not compiles and "Triton is not installed" in why
    p100 = machine_with("Tesla P100-PCIE-16GB", (6, 0), CU126_ARCHS)
    assert "below Triton's 7.0" in compile_choice("auto", CUDA, p100)[1]
    assert compile_choice("always", CUDA, p100)[0]  # the user's own choice


@pytest.mark.parametrize(
    ("capability", "arch_list", "runs"),
    [
        ((7, 5), CU130_ARCHS, True),
        ((8, 9), CU130_ARCHS, True),  # sm_86 code runs on 8.9 (same major, lower minor)
        ((7, 0), CU130_ARCHS, False),  # a V100 on PyPI's default build
        ((6, 0), CU130_ARCHS, False),  # a P100
        ((6, 0), CU126_ARCHS, True),
        ((10, 3), ("sm_90", "compute_90"), True),  # PTX is compiled for newer GPUs
        ((10, 0), ("sm_90",), False),  # binary code does not cross a major version
        ((9, 0), ("sm_90a",), True),
    ],
)
def test_which_builds_have_code_for_a_gpu(
    capability: tuple[int, int], arch_list: tuple[str, ...], runs: bool
) -> None:
    assert build_runs_on(capability, arch_list) is runs


def test_a_p100_on_the_default_build_stops_with_the_legacy_install_line() -> None:
    machine = machine_with("Tesla P100-PCIE-16GB", (6, 0), CU130_ARCHS)
    for setting in ("auto", "cuda"):
        message = refusal(machine, setting)
        assert "Tesla P100-PCIE-16GB (compute capability 6.0) is not in torch" in message
        assert "sm_75, sm_80" in message
        assert "--index-url https://download.pytorch.org/whl/cu126" in message
        assert f"torch=={torch.__version__.split('+')[0]}" in message
        assert "train.device: cpu" in message and "\n" not in message
    assert resolve_device("cpu", machine=machine) == torch.device("cpu")  # an explicit cpu trains


def test_a_driver_too_old_for_the_build_is_never_a_silent_cpu_run() -> None:
    recent_gpu_old_driver = machine_with(
        "Tesla T4", (7, 5), cuda_available=False, driver="535.104.05"
    )
    message = refusal(recent_gpu_old_driver)
    assert "Tesla T4 (compute capability 7.5) and NVIDIA driver 535.104.05 are here" in message
    assert "(CUDA 13.0) needs driver 580.0 or newer" in message
    assert "pip uninstall -y torch torchvision && pip install torch==" in message
    assert "whl/cu126" in message and "--force-reinstall" not in message
    ancient_driver = machine_with(
        "Quadro RTX 8000", (7, 5), cuda_available=False, driver="470.82.01"
    )
    message = refusal(ancient_driver)
    assert (
        "torch==2.7.1 torchvision==0.22.1 --index-url https://download.pytorch.org/whl/cu118"
        in message
    )
    assert "drivers older than 525.60; this one is 470.82.01" in message


def test_a_cpu_only_build_beside_a_gpu_names_the_cuda_build() -> None:
    machine = machine_with("NVIDIA GeForce RTX 4070 Laptop GPU", (8, 9), (), cuda_available=False,
                           torch_cuda=None)  # fmt: skip
    with pytest.raises(PipelineError, match=r"is a CPU-only build; fix: pip uninstall .*whl/cu130"):
        resolve_device("auto", machine=machine)


def test_a_loaded_driver_without_a_listed_gpu_is_a_cpu_job_not_a_problem() -> None:
    """A CPU-only job on a cluster's GPU node: the driver is loaded, the scheduler hides every
    device from nvidia-smi; it trains on the CPU."""
    cpu_job = Machine(False, (), CU130_ARCHS, "13.0", "550.54.15", True)
    assert resolve_device("auto", machine=cpu_job) == torch.device("cpu")


def test_a_mixed_machine_names_the_gpu_the_build_cannot_run() -> None:
    machine = dataclasses.replace(
        machine_with("NVIDIA A100-SXM4-40GB", (8, 0)),
        gpus=(
            Gpu("NVIDIA A100-SXM4-40GB", (8, 0), 40.0),
            Gpu("Tesla V100-SXM2-16GB", (7, 0), 16.0),
        ),
    )
    with pytest.raises(
        PipelineError, match=r"Tesla V100-SXM2-16GB \(compute capability 7.0\) is not in"
    ):
        resolve_device("auto", machine=machine)


def test_no_gpu_or_hidden_gpus_train_on_the_cpu() -> None:
    nothing = Machine(False, (), CU130_ARCHS, "13.0", None, False)
    assert resolve_device("auto", machine=nothing) == torch.device("cpu")
    with pytest.raises(PipelineError, match="'cuda' but no CUDA device is available"):
        resolve_device("cuda", machine=nothing)
    hidden = dataclasses.replace(
        machine_with("Tesla T4", (7, 5), cuda_available=False), gpus_hidden=True
    )  # CUDA_VISIBLE_DEVICES="": the user asked for the CPU
    assert resolve_device("auto", machine=hidden) == torch.device("cpu")


def _fake_nvidia_smi(folder: Path, script: str) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_nvidia_smi_is_read_for_the_gpu_torch_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, 'echo "Tesla T4, 535.104.05, 15360, 7.5"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu._nvidia_smi_gpus() == ((Gpu("Tesla T4", (7, 5), 15.0),), "535.104.05")
    # an old nvidia-smi without compute_cap: refused once, then asked without it
    _fake_nvidia_smi(
        tmp_path,
        'case "$1" in *compute_cap*) echo "Field compute_cap is not a valid field" >&2; exit 2;; esac\n'
        'echo "Tesla P100-PCIE-16GB, 470.82.01, 16280"\n',
    )
    gpus, driver = gpu._nvidia_smi_gpus()
    assert gpus[0].name == "Tesla P100-PCIE-16GB" and gpus[0].capability is None
    assert driver == "470.82.01"


def test_an_auto_cpu_run_over_two_hours_stops_and_an_explicit_cpu_trains() -> None:
    with pytest.raises(PipelineError) as refused:
        check_auto_cpu_estimate(80 * 60.0, 78_000, "auto")
    assert "about 80.0 h" in str(refused.value)
    assert "`python -m pipeline profile cpu`" in str(refused.value)
    assert "train.device: cpu" in str(refused.value)
    check_auto_cpu_estimate(80 * 60.0, 78_000, "cpu")
    check_auto_cpu_estimate(119.0, 1_000, "auto")


def test_the_train_stage_refuses_bfloat16_on_a_t4_before_loading_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.stages import train

    monkeypatch.setattr(gpu, "this_machine", lambda: machine_with("Tesla T4", (7, 5)))
    params = seed_train(autocast_dtype="bfloat16")
    with pytest.raises(PipelineError, match="Tesla T4 .* has no native support"):
        train.setup_training(None, params, tmp_path / "no-data", CUDA)


def test_the_deterministic_flags_are_set_both_ways_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deterministic run, then a normal one in the same process (distill's rounds, a notebook):
    the second gets cuDNN autotuning back, not the first run's slow kernels."""
    from pipeline.stages import train

    monkeypatch.setattr(train, "resolve_device", lambda *_args, **_kwargs: CUDA)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)  # fmt: skip
    try:
        assert train.configure_device(seed_train(deterministic=True)) == CUDA
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        train.configure_device(seed_train(deterministic=False))
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def test_the_collective_timeout_is_minutes_and_bounded() -> None:
    assert seed_train().collective_timeout_minutes == 30.0
    with pytest.raises(PipelineError, match="train.collective_timeout_minutes"):
        seed_train(collective_timeout_minutes=0)


def test_a_rocm_build_on_an_amd_gpu_trains_on_it_in_bfloat16() -> None:
    """ROCm torch reports AMD GPUs through torch.cuda (torch.version.cuda is None, hip is set):
    torch checks its own gfx architectures, and an MI250X (9.0) has bf16."""
    rocm = Machine(True, (Gpu("AMD Instinct MI250X", (9, 0), 64.0),), ("gfx90a",), None, None,
                   True, torch_hip="6.2.41133")  # fmt: skip
    assert resolve_device("auto", machine=rocm) == CUDA
    assert choose_precision(CUDA, True, "auto", machine=rocm).name == "bfloat16"


def test_data_parallel_ranks_on_mixed_gpus_all_train_in_the_weakest_gpus_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An A100 and a T4 under one torchrun: one precision for every rank (a T4 rank's loss
    scaler would otherwise scale the gradients the A100 rank averages with its own)."""
    import torch.distributed as dist

    mixed = dataclasses.replace(
        machine_with("NVIDIA A100-SXM4-40GB", (8, 0)),
        gpus=(Gpu("NVIDIA A100-SXM4-40GB", (8, 0), 40.0), Gpu("Tesla T4", (7, 5), 15.0)),
    )
    on_a100 = torch.device("cuda", 0)
    assert choose_precision(on_a100, True, "auto", machine=mixed).name == "bfloat16"  # alone
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    both = choose_precision(on_a100, True, "auto", machine=mixed)
    assert both.name == "float16" and "Tesla T4" in both.reason
    with pytest.raises(PipelineError, match="Tesla T4 .* has no native support"):
        choose_precision(on_a100, True, "bfloat16", machine=mixed)


def test_blackwell_on_a_driver_before_580_is_told_to_update_the_driver() -> None:
    rtx5090 = machine_with("NVIDIA GeForce RTX 5090", (12, 0), cuda_available=False,
                           driver="575.51.03")  # fmt: skip
    message = refusal(rtx5090)
    assert "update the NVIDIA driver to 580 or newer" in message
    assert "cu126" not in message  # no CUDA 12.6 build has Blackwell code


def test_a_gpu_torch_cannot_start_with_a_recent_driver_is_not_blamed_on_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    hidden_by_index = dataclasses.replace(
        machine_with("Tesla T4", (7, 5), cuda_available=False, driver="580.65.06"),
        cuda_warning="CUDA initialization: CUDA driver initialization failed",
    )
    message = refusal(hidden_by_index)
    assert (
        "cannot start CUDA (torch: CUDA initialization: CUDA driver initialization failed)"
        in message
    )
    assert "check CUDA_VISIBLE_DEVICES='1'" in message and "docker --gpus all" in message
    assert "pip" not in message and "driver too old" not in message


def test_nvidia_smi_output_that_is_not_utf8_is_read_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, "printf 'Tesla T4\\377, 535.104.05, 15360, 7.5\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, driver = gpu._nvidia_smi_gpus()
    assert gpus[0].name.startswith("Tesla T4") and gpus[0].capability == (7, 5)
    assert driver == "535.104.05"


def test_training_calls_the_auto_cpu_check_with_its_estimate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop itself stops an auto CPU run whose estimate is long (an explicit cpu trains)."""
    from test_engine import SMALL_MODELS, train_a_little

    from pipeline.engine import cpu_estimate
    from pipeline.engine.models import build_model

    monkeypatch.setattr(cpu_estimate, "estimated_run_seconds", lambda *_args: 3 * 3600.0)
    params = seed_train(device="auto", epochs=1, batch_size=10, lr=0.05)
    with pytest.raises(PipelineError, match="would take about 3.0 h"):
        train_a_little(build_model(SMALL_MODELS["seed_resnet"]), params)
    train_a_little(
        build_model(SMALL_MODELS["seed_resnet"]), dataclasses.replace(params, device="cpu")
    )
