"""Which device and which rank this process is: shared by predict and finetune, importing neither.

RANK / WORLD_SIZE / LOCAL_RANK are read only here: finetune runs DDP with them
and predict --shard defaults to them, so N launched processes split one job.
torch is imported inside :func:`pick_device` only, so reading the rank stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_and_world() -> tuple[int, int]:
    rank, world, _ = dist_info()
    return rank, world


def pick_device(name: str = "auto", local_rank: int = 0) -> "torch.device":
    """``auto`` means this process's CUDA device (torchrun's LOCAL_RANK) when one is usable, else the CPU."""
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)  # torch.cuda.set_device and DDP need an index
    return dev
