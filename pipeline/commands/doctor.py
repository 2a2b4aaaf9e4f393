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
from rich.table import Table
from rich.text import Text

from pipeline.config.load import load_profile, profile_names
from pipeline.config.params import Params, with_teacher_budget
from pipeline.engine import gpu
from pipeline.engine.cpu_estimate import AUTO_CPU_LIMIT_MINUTES
from pipeline.engine.device import choose_precision, compile_choice, resolve_device
from pipeline.engine.models import build_model, count_trainable_params
from pipeline.engine.timing import TrainingEstimate, estimate_training, split_sizes
from pipeline.errors import PipelineError
from pipeline.integrations.kaggle_credentials import kaggle_credentials_source
from pipeline.paths import RAW_DIR
from pipeline.reporting import table_console


def machine_lines() -> list[str]:
    machine = gpu.this_machine()
    build = f"CUDA {machine.torch_cuda}" if machine.torch_cuda else "CPU-only"
    lines = [
        f"torch {torch.__version__} ({build} build; GPU code for {', '.join(machine.arch_list) or 'none'})"
    ]
    for index, card in enumerate(machine.gpus):
        capability = f"{card.capability[0]}.{card.capability[1]}" if card.capability else "unknown"
        memory = f", {card.memory_gib:.0f} GiB" if card.memory_gib else ""
        lines.append(f"GPU {index}: {card.name}, compute capability {capability}{memory}")
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
    from pipeline.data.locate import input_files, input_folder, raw_files_present
    from pipeline.stages.fetch import kaggle_notebook_data

    source = params.data.source
    credentials = kaggle_credentials_source()
    found = f"Kaggle credentials: {credentials}" if credentials else "no Kaggle credentials"
    if source != "auto":
        return f"data.source: {source}; {found}"
    input_dir = input_folder(raw_dir)
    if input_files(input_dir):
        return f"data.source: auto takes the files you put in {input_dir}/; {found}"
    try:
        present = raw_files_present(raw_dir)
    except PipelineError as error:  # two copies of the batches: fetch names them the same way
        return f"data.source: auto stops: {error}"
    if present:
        return f"data.source: auto uses the files in {raw_dir}; {found}"
    mounted = kaggle_notebook_data(params.data.competition)
    if mounted is not None:
        return f"data.source: auto takes the files mounted at {mounted}; {found}"
    if credentials:
        return f"data.source: auto downloads '{params.data.competition}' from Kaggle ({found})"
    return (
        f"data.source: auto finds no data in {input_dir}/ or {raw_dir} and {found}: put the "
        f"competition's zip in {input_dir}/"
    )


def estimate_rows(
    params: Params, device: torch.device, profiles: list[str]
) -> list[tuple[str, Params, TrainingEstimate | str]]:
    """(name, its params, its estimate or why there is none) for params.yaml and `profiles`."""
    train_images, val_images = split_sizes(params.prepare)
    recipes = [(name, load_profile(name)) for name in profiles]
    same = [
        name for name, recipe in recipes
        if (recipe.model, recipe.train) == (params.model, params.train)
    ]  # fmt: skip
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
        model = with_teacher_budget(recipe.model, params.distill.teacher_max_params)
        try:
            estimate: TrainingEstimate | str = estimate_training(
                model, train, device, train_images, val_images
            )
        except PipelineError as error:
            estimate = str(error)
        except Exception as error:  # noqa: BLE001 - out of memory, a compiler failure: one row
            first_line = (str(error).strip().splitlines() or [""])[0]
            estimate = f"{type(error).__name__}: {first_line}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((name, recipe, estimate))
    return rows


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run(params: Params, profiles: list[str] | None = None) -> None:
    out = table_console()  # text only: colour by style (profile and model names are files')
    out.print("This machine", style="bold")
    for line in machine_lines():
        out.print(f"  {line}")
    setting = params.train.device
    problem = gpu.unusable_gpu_problem(gpu.this_machine())
    try:
        device = resolve_device(setting)
    except PipelineError as error:
        out.print(Text.assemble((f"train.device: {setting}", "bold"), " → ", ("stops", "red"),
                                f": {error}"))  # fmt: skip
        if problem is None:
            return
        device = torch.device("cpu")  # the estimates below: what `train.device: cpu` would take
        out.print("  (the estimates below are for the CPU, which `train.device: cpu` would use)")
    else:
        out.print(Text.assemble((f"train.device: {setting}", "bold"), f" → {device.type}"))
    try:
        precision = choose_precision(
            device, params.train.mixed_precision, params.train.autocast_dtype
        )
        out.print(f"  precision: {precision.name} ({precision.reason})")
    except PipelineError as error:
        out.print(Text.assemble("  precision: ", ("refused", "red"), f": {error}"))
    out.print(f"  compile: {compile_choice(params.train.compile, device)[1]}")
    out.print("Data", style="bold")
    out.print(f"  {data_line(params)}")
    names = profile_names() if profiles is None else profiles
    table = Table(
        title=f"Training time on this machine ({device.type}, measured)", title_justify="left"
    )
    for column in ("recipe", "model", "params", "epochs", "s/step", "training"):
        table.add_column(
            column,
            justify="right" if column in ("params", "epochs", "s/step", "training") else "left",
        )
    auto_cpu = params.train.device == "auto" and device.type == "cpu"
    budget = params.distill.teacher_max_params
    for name, recipe, estimate in estimate_rows(params, device, names):
        model = recipe.model
        if isinstance(estimate, str):
            table.add_row(name, model.name, "", str(recipe.train.epochs), "",
                          Text(estimate, style="red"))  # fmt: skip
            continue
        size = f"{count_trainable_params(build_model(with_teacher_budget(model, budget))):,}"
        time_text = Text(duration(estimate.total_seconds))
        if auto_cpu and estimate.total_seconds > AUTO_CPU_LIMIT_MINUTES * 60:
            time_text.append(" (stops: over 2 h on the CPU)", style="red")
        table.add_row(
            name, model.name, size, str(recipe.train.epochs), f"{estimate.seconds_per_step:.3f}",
            time_text,
        )  # fmt: skip
    out.print(table)
    out.print(
        "  `python -m pipeline profile NAME --minutes M` fits a profile's epochs to M minutes here"
    )
