"""Device choice and mixed precision, shared by train, select and predict."""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import PipelineError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` → CUDA when present, else CPU; asking for CUDA without one is an error naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"params: {key} is 'cuda' but no CUDA device is available")
    return torch.device(name)


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(
    device: torch.device, enabled: bool = True, dtype: str = "bfloat16"
) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA (BatchNorm stays in fp32 under autocast); a no-op on the
    CPU, which has no fast half precision on this project's machines (AVX2 only)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[dtype])
    return contextlib.nullcontext()
