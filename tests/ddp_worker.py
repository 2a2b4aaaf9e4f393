"""Run under torchrun by tests/test_distributed.py: a few data-parallel steps, rank 0 saves.

`python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT.pt`
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from conftest import seed_model, seed_train
from torch import nn

from pipeline.data.synthetic import make_images
from pipeline.engine import loop
from pipeline.engine.loop import fit
from pipeline.engine.models import build_model
from pipeline.engine.normalise import to_device_set

MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]
# no randomness in augmentation or dropout (ranks draw their own), no BatchNorm (per-rank statistics on CPU,
# where SyncBatchNorm does not run): what is left is the data split and the gradient average
PARAMS = seed_train(
    device="cpu", epochs=2, batch_size=20, drop_last=True, lr=0.05, momentum=0.9,
    crop_padding=0, flip="none", schedule="cosine", checkpoint_every=1,
)  # fmt: skip


def without_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def tiny_model() -> nn.Module:
    """The initial weights both runs start from: seed 0, no BatchNorm, no dropout."""
    torch.manual_seed(0)
    return without_batchnorm(build_model(seed_model(base_width=8, blocks=[1, 1, 1], dropout=0.0)))


def train_tiny(nproc: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Two epochs on 80 synthetic images: the weights afterwards, and the training-set indices
    this process trained on at each step."""
    seen: list[list[int]] = []
    augment_batch = loop.augment_batch

    def recording(images, indices, *args):  # noqa: ANN001, ANN202 - a pass-through
        seen.append(indices.tolist())
        return augment_batch(images, indices, *args)

    loop.augment_batch = recording
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(80) % 10)
    train_set = to_device_set(make_images(labels, rng), labels, MEAN, STD, torch.device("cpu"))
    model = tiny_model()
    params = dataclasses.replace(PARAMS, nproc=nproc)
    try:
        fit(model, params, train_set, train_set, (MEAN, STD), lambda *_: None)
    finally:
        loop.augment_batch = augment_batch
    return model.state_dict(), seen


if __name__ == "__main__":
    dist.init_process_group("gloo")
    weights, seen = train_tiny(dist.get_world_size())
    rank = dist.get_rank()
    Path(f"{sys.argv[1]}.rank{rank}.json").write_text(json.dumps(seen))
    if rank == 0:
        torch.save(weights, sys.argv[1])
    dist.destroy_process_group()
