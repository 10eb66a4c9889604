"""How many processes a predict job uses: decoding workers, encoding processes and inference processes.

Each has an automatic default from the device, the backend and the core count; ``--parallel``
(:func:`parse_parallel`) overrides any of them for experts. docs/performance.md has the
measurements behind the defaults.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

# PyTorch CPU backends whose state survives a fork (ONNX Runtime's thread pools do not):
# the only ones forked inference processes can use.
PROCS_BACKENDS = ("eager", "bf16")
MAX_DEFAULT_PROCS = 16


def can_fork() -> bool:
    """Whether this platform forks (not Windows): inference and encoding processes need it."""
    return "fork" in multiprocessing.get_all_start_methods()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_encoders() -> int:
    """Encoding processes by default: 1 on 2 cores or fewer, else half the cores (at most 8).

    One encoder takes the encoding off the main process's GIL without crowding the decoding
    worker on a small host; above 2 cores the GIL is the limit, which more encoders lift."""
    n = cores()
    return 1 if n <= 2 else min(8, n // 2)


def default_workers(device: "torch.device") -> int:
    """Decoding processes by default: 1 on the CPU (the network wants the cores), else about half the
    cores (at most 8): a GPU leaves the host nothing to do but decode and encode."""
    if device.type == "cpu":
        return 1
    return max(1, min(8, (cores() - 1) // 2))


def default_procs(device: "torch.device", backend: str) -> int:
    """Inference processes by default: one per core (at most 16) on the CPU with the eager or bf16
    backend, else 1. One-thread pipelines side by side waste none of the time OpenMP's threads spin
    at barriers while another process holds the core; the children run one thread each because GNU
    OpenMP hangs in a forked child that asks for more."""
    if device.type != "cpu" or backend not in PROCS_BACKENDS or not can_fork():
        return 1
    return max(1, min(MAX_DEFAULT_PROCS, cores()))


def check_procs(procs: int, device: "torch.device", backend: str) -> int:
    """An explicit number of inference processes, refused where it cannot work (1 where there is no fork)."""
    procs = max(1, procs)
    if procs > 1 and device.type != "cpu":
        raise ConfigError(f"--parallel procs={procs} splits CPU inference across processes; on {device} use "
                          "procs=1 (the GPU batches instead)")
    if procs > 1 and backend not in PROCS_BACKENDS:
        raise ConfigError(f"--parallel procs={procs} works with --backend {' or '.join(PROCS_BACKENDS)}; "
                          f"--backend {backend} keeps thread pools a fork cannot copy: use procs=1")
    return procs if can_fork() else 1


@dataclass(frozen=True)
class Parallel:
    """What ``--parallel`` asked for; None: the default."""

    procs: int | None = None
    workers: int | None = None
    encoders: int | None = None


PARALLEL_HELP = ("Expert: processes, as comma-separated KEY=N (any subset; the rest stay automatic). "
                 "procs: CPU inference processes, each a whole pipeline with a one-thread network on every "
                 "N-th image (default: one per core, at most 16, with --backend eager or bf16 on the CPU, else 1). "
                 "workers: decoding processes of a one-process run (0 = decode in the main process; default: 1 on "
                 "the CPU, about half the cores on a GPU, at most 8). encoders: processes writing masks and "
                 "records in a one-process run (0 = two threads; default: 1 on 2 cores or fewer, else half the "
                 "cores, at most 8). Example: --parallel procs=1,workers=0")


def parse_parallel(spec: str | None) -> Parallel:
    """``procs=N,workers=N,encoders=N`` (any subset) -> :class:`Parallel`; ValueError with the one line to show."""
    if not spec:
        return Parallel()
    got: dict[str, int] = {}
    for part in spec.split(","):
        key, sep, val = part.strip().partition("=")
        key = key.strip()
        if not sep or key not in ("procs", "workers", "encoders") or key in got:
            raise ValueError(f"--parallel {spec!r}: expected KEY=N with KEY procs, workers or encoders (each once), "
                             "e.g. procs=1,workers=0")
        try:
            n = int(val)
        except ValueError:
            raise ValueError(f"--parallel {spec!r}: {key}={val.strip()!r} is not a whole number") from None
        if n < (1 if key == "procs" else 0):
            raise ValueError(f"--parallel {spec!r}: {key} must be at least {1 if key == 'procs' else 0}")
        got[key] = n
    return Parallel(**got)


def exit_with_parent(parent: int) -> None:
    """In a forked child: a daemon thread that ends the process when ``parent`` is gone (kill -9 leaves no orphans)."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
