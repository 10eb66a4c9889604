"""torchrun's environment and the collective calls, in one place.

RANK / WORLD_SIZE / LOCAL_RANK are read only here: finetune runs DDP with them
and predict --shard defaults to them, so N launched processes split one job.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_and_world() -> tuple[int, int]:
    rank, world, _ = dist_info()
    return rank, world


def init_group(world: int, device: torch.device) -> bool:
    """Start the process group when launched as several processes; True when this call started it."""
    own = world > 1 and not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return own


def close_group(world: int, own: bool) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()
        if own:
            dist.destroy_process_group()


def sum_over_ranks(values, world: int, device: torch.device):
    """Element-wise sum of a NumPy array (or a list of floats) over all ranks; as is for one process."""
    if world == 1:
        return values
    if isinstance(values, np.ndarray):
        t = torch.from_numpy(values).to(device)
        dist.all_reduce(t)
        return t.cpu().numpy()
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
