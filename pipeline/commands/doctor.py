"""`python -m pipeline doctor`: one screen that says, before a long run, what will happen here.

In order: the machine (GPUs, compute capability, memory, driver, torch's build); what
params.yaml's `train.device`, precision and compile become on it (or the one line that stops
the run, with its fix); where `fetch` will take the data from and whether Kaggle credentials
are found (where, never what); and a measured estimate of each profile's training time on
this machine (engine/timing.py: a few real steps of its model and batch, warm-up excluded).
Nothing is written.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from pipeline.config.load import load_profile, profile_names
from pipeline.config.params import Params, PrepareParams
from pipeline.engine.device import (
    choose_precision,
    compile_choice,
    resolve_device,
    this_machine,
    unusable_gpu_problem,
)
from pipeline.engine.models import build_model, count_trainable_params
from pipeline.engine.timing import TrainingEstimate, estimate_training
from pipeline.errors import PipelineError
from pipeline.integrations.kaggle_client import kaggle_credentials_source
from pipeline.paths import RAW_DIR
from pipeline.reporting import table_console

CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000
# on a CPU each profile is timed at this batch at most and scaled (a CPU's step time grows with
# the batch in proportion): doctor takes about a minute there instead of many
CPU_PROBE_BATCH = 256
CPU_UNTIMED_STEPS, CPU_TIMED_STEPS = 1, 2


def split_sizes(prepare: PrepareParams) -> tuple[int, int]:
    """(training images, validation images) that prepare makes of the real CIFAR-10."""
    if prepare.val == "test_batch":
        return CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES
    train = CIFAR_TRAIN_IMAGES - prepare.holdout_images
    return train + (CIFAR_TEST_IMAGES if prepare.train_on_test_batch else 0), prepare.holdout_images


def machine_lines() -> list[str]:
    machine = this_machine()
    build = f"CUDA {machine.torch_cuda}" if machine.torch_cuda else "CPU-only"
    lines = [
        f"torch {torch.__version__} ({build} build; GPU code for {', '.join(machine.arch_list) or 'none'})"
    ]
    for index, gpu in enumerate(machine.gpus):
        capability = f"{gpu.capability[0]}.{gpu.capability[1]}" if gpu.capability else "unknown"
        memory = f", {gpu.memory_gib:.0f} GiB" if gpu.memory_gib else ""
        lines.append(f"GPU {index}: {gpu.name}, compute capability {capability}{memory}")
    if machine.driver:
        lines.append(f"NVIDIA driver {machine.driver}")
    if not machine.gpus:
        lines.append(
            "no NVIDIA GPU found"
            + (" (CUDA_VISIBLE_DEVICES hides them)" if machine.gpus_hidden else "")
        )
    lines.append(f"CPU: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    return lines


def data_line(params: Params, raw_dir: Path = RAW_DIR) -> str:
    from pipeline.stages.fetch import kaggle_notebook_data, raw_files_present

    source = params.data.source
    credentials = kaggle_credentials_source()
    found = f"Kaggle credentials: {credentials}" if credentials else "no Kaggle credentials"
    if source != "auto":
        return f"data.source: {source}; {found}"
    if raw_files_present(raw_dir):
        return f"data.source: auto uses the files in {raw_dir}; {found}"
    mounted = kaggle_notebook_data(params.data.competition)
    if mounted is not None:
        return f"data.source: auto takes the files mounted at {mounted}; {found}"
    if credentials:
        return f"data.source: auto downloads '{params.data.competition}' from Kaggle ({found})"
    return f"data.source: auto finds no data in {raw_dir} and {found}: `dvc repro` will stop and say how to go on"


def estimate_rows(
    params: Params, device: torch.device, profiles: list[str]
) -> list[tuple[str, Params, TrainingEstimate | str]]:
    """(name, its params, its estimate or why there is none) for params.yaml and `profiles`;
    on a CPU each timed at CPU_PROBE_BATCH images at most, fewer steps, and scaled."""
    train_images, val_images = split_sizes(params.prepare)
    on_cpu = device.type == "cpu"
    recipes = [(name, load_profile(name)) for name in profiles]
    same = [
        name
        for name, recipe in recipes
        if (recipe.model, recipe.train) == (params.model, params.train)
    ]
    if same:  # params.yaml holds a profile as shipped: timed once, under both names
        recipes = [
            (f"{name} (params.yaml)" if name == same[0] else name, recipe)
            for name, recipe in recipes
        ]
    else:
        recipes.insert(0, ("params.yaml", params))
    rows = []
    for name, recipe in recipes:
        train = dataclasses.replace(recipe.train, device=device.type)
        try:
            estimate: TrainingEstimate | str = estimate_training(
                recipe.model, train, device, train_images, val_images,
                max_probe_batch=CPU_PROBE_BATCH if on_cpu else None,
                untimed_steps=CPU_UNTIMED_STEPS if on_cpu else 3,
                timed_steps=CPU_TIMED_STEPS if on_cpu else 5,
            )  # fmt: skip
        except PipelineError as error:
            estimate = str(error)
        except torch.cuda.OutOfMemoryError:
            estimate = "out of GPU memory at this batch size"
        rows.append((name, recipe, estimate))
    return rows


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run(params: Params, profiles: list[str] | None = None) -> None:
    out = table_console()
    out.print("[bold]This machine[/bold]")
    for line in machine_lines():
        out.print(f"  {escape(line)}")
    setting = params.train.device
    problem = unusable_gpu_problem(this_machine())
    try:
        device = resolve_device(setting)
    except PipelineError as error:
        out.print(f"[bold]train.device: {setting}[/bold] → [red]stops[/red]: {escape(str(error))}")
        if problem is None:
            return
        device = torch.device("cpu")  # the estimates below: what `train.device: cpu` would take
        out.print("  (the estimates below are for the CPU, which `train.device: cpu` would use)")
    else:
        out.print(f"[bold]train.device: {setting}[/bold] → {device.type}")
    try:
        precision = choose_precision(
            device, params.train.mixed_precision, params.train.autocast_dtype
        )
        out.print(f"  precision: {precision.name} ({escape(precision.reason)})")
    except PipelineError as error:
        out.print(f"  precision: [red]refused[/red]: {escape(str(error))}")
    out.print(f"  compile: {escape(compile_choice(params.train.compile, device)[1])}")
    out.print(f"[bold]Data[/bold]\n  {escape(data_line(params))}")
    names = profile_names() if profiles is None else profiles
    table = Table(
        title=f"Training time on this machine ({device.type}, measured)", title_justify="left"
    )
    for column in ("recipe", "model", "params", "epochs", "s/step", "training"):
        table.add_column(
            column,
            justify="right" if column in ("params", "epochs", "s/step", "training") else "left",
        )
    scaled = False
    for name, recipe, estimate in estimate_rows(params, device, names):
        model = recipe.model
        if isinstance(estimate, str):
            table.add_row(name, model.name, "", str(recipe.train.epochs), "",
                          f"[red]{escape(estimate)}[/red]")  # fmt: skip
            continue
        size = f"{count_trainable_params(build_model(model)):,}"
        scaled = scaled or estimate.probe_batch < recipe.train.batch_size
        table.add_row(
            name, model.name, size, str(recipe.train.epochs), f"{estimate.seconds_per_step:.3f}",
            duration(estimate.total_seconds),
        )  # fmt: skip
    out.print(table)
    if scaled:
        out.print(
            f"  (timed at batches of {CPU_PROBE_BATCH} and scaled to each recipe's batch; "
            "validation included)"
        )
    out.print(
        "  `python -m pipeline profile NAME --minutes M` fits a profile's epochs to M minutes here"
    )
