"""The collective calls of a DDP run (process group, sums over ranks).

Which rank this process is comes from :mod:`fcn_label.devices` (predict reads it too).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


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
