"""Processes around a predict job: how many (decoding, encoding, inference) by default, and what
the forked ones run.

--procs forks whole pipelines (:func:`_proc_main`), --encoders forks output writers
(:func:`encoding_pool`); both are fork-only (the children inherit the job instead of pickling
it), and a forked child keeps one torch thread (GNU OpenMP hangs in a forked child that asks for
more).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..guard import first_line
from .discover import Item
from .options import JobResult
from .predictor import Prediction
from .records import SegmentWriter

if TYPE_CHECKING:
    from .job import PredictJob


def can_fork() -> bool:
    """Whether this platform forks (not Windows): --procs and --encoders need it."""
    return "fork" in multiprocessing.get_all_start_methods()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_encoders() -> int:
    """Encoding processes when --encoders is not given: 1 on 2 cores or fewer, else half the cores (<= 8).

    Measured on a shared 2-core CPU (alternating runs, one session): 2,000 64x48 images 268-283 img/s
    with threads, 292-321 with 1 encoder, 331-342 with 2; 480x360 frames with a free network
    (predict_speed.py --model none, --workers 1) 55.6-60.4 threads, 56.4-64.4 with 1, 53.6-58.5 with 2
    (and 48.7 with --workers 2): one encoder takes the encoding off the main process's GIL without
    crowding the decoding worker. Above 2 cores the GIL is the limit, which more encoders lift
    (not measured on such a host here)."""
    cores = _cores()
    return 1 if cores <= 2 else min(8, cores // 2)


def default_workers(device: torch.device) -> int:
    """Decoding processes when --workers is not given: 1 on the CPU, else about half the cores (at most 8).

    On the CPU the network wants the cores (one decoding worker measured best on 2 cores, and --procs
    decodes in each pipeline's own thread). A GPU leaves the host nothing to do but decode and encode:
    one worker decodes ~200-350 frames a second (2.8-4.6 ms a 480x360 PNG), well below what the
    network takes, so decoders get the cores the encoders (default_encoders) leave, one for the main
    process. The split on a 16-core GPU host is not measured yet (scripts/gpu_bench.sh does)."""
    if device.type == "cpu":
        return 1
    return max(1, min(8, (_cores() - 1) // 2))


# PyTorch CPU backends whose state survives a fork (GNU OpenMP's and ONNX Runtime's thread pools,
# and Inductor's compiled kernels, do not): the only ones --procs can split across processes.
PROCS_BACKENDS = ("eager", "bf16")
MAX_DEFAULT_PROCS = 16


def default_procs(device: torch.device, backend: str) -> int:
    """Inference processes when --procs is not given: one per core (at most 16) on the CPU with the eager
    or bf16 backend, else 1.

    On 2 cores a 2-thread network shares the cores with decoding and encoding, and OpenMP's threads spin
    at every barrier while the other one is descheduled; two one-thread pipelines side by side waste
    nothing of that (shipped model, 480x360, one session: eager 22.7-24.0 img/s vs 18.8-20.5, bf16
    33.4-34.6 vs 28.4-30.2, stand-in network 92-106 vs 45-58). The children run one thread each because
    GNU OpenMP hangs in a forked child that asks for more."""
    if device.type != "cpu" or backend not in PROCS_BACKENDS:
        return 1
    if not can_fork():
        return 1
    return max(1, min(MAX_DEFAULT_PROCS, _cores()))


def _exit_with_parent(parent: int) -> None:
    """In a forked child: a daemon thread that ends the process when ``parent`` is gone (kill -9 leaves no orphans)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _own_writers(job: "PredictJob") -> None:
    """In a forked child: its own lock, folder cache and record / failure segments (named by its pid)."""
    job._lock = threading.Lock()
    job._checked_dirs = set()
    job._records = SegmentWriter(job.layout.records_dir, job._checked)
    job._failures = SegmentWriter(job.layout.failures_dir, job._checked)


def _proc_main(job: "PredictJob", items: list[Item], conn, parent: int) -> None:
    """An inference process (--procs): the whole pipeline on ``items``, events sent to the parent; never returns."""
    code = 0
    try:
        _exit_with_parent(parent)
        torch.set_num_threads(1)
        job.o = replace(job.o, workers=0, encoders=0, procs=1)
        _own_writers(job)
        lock = threading.Lock()

        def send(*msg) -> None:
            with lock:
                conn.send(msg)

        job.on_progress = lambda done, total: send("ok")
        job.on_failure = lambda path, msg: send("fail", path, msg)
        res = JobResult(total=len(items))
        try:
            job._predict_here(items, res)
        finally:
            job._records.close()
            job._failures.close()
        if res.stopped:
            send("stop", res.stopped)
        send("end")
    except BaseException as e:  # noqa: BLE001 - Ctrl-C or a bug: tell the parent, never unwind into its code
        code = 1
        try:
            conn.send(("stop", f"an inference process failed ({type(e).__name__}: {first_line(e)}); re-run the "
                               "same command to finish (finished images are kept), or add --procs 1"))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def run_in_procs(job: "PredictJob", todo: list[Item], res: JobResult, procs: int) -> None:
    """Fork ``procs`` inference processes, process k taking every procs-th image from k; gather their events.

    Each child decodes in its main thread and writes in two threads (--workers and --encoders apply to a
    single process), appends to its own record segment, and exits with the parent."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    readers: dict = {}
    ended: set = set()
    done = res.skipped
    try:
        for k in range(procs):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_proc_main, args=(job, todo[k::procs], w, os.getpid()),
                            name=f"fcn-label-predict-{k}", daemon=True)
            p.start()
            w.close()  # the child holds the only write end: end of file when it exits
            readers[r] = p
        while readers:
            for r in wait(list(readers)):
                try:
                    msg = r.recv()
                except (EOFError, OSError):
                    p = readers.pop(r)
                    p.join()
                    if r not in ended and not res.stopped:
                        res.stopped = (f"an inference process ended unexpectedly (exit code {p.exitcode}); re-run "
                                       "the same command to finish: finished images are kept and skipped")
                    continue
                if msg[0] == "ok":
                    res.done += 1
                    done += 1
                    job.on_progress(done, res.total)
                elif msg[0] == "fail":
                    res.failed.append((msg[1], msg[2]))  # the child kept the failure record
                    job.on_failure(msg[1], msg[2])
                elif msg[0] == "stop":
                    res.stopped = res.stopped or msg[1]
                elif msg[0] == "end":
                    ended.add(r)
    finally:
        for p in readers.values():  # Ctrl-C or an error here: take the children down with us
            p.terminate()
        for p in readers.values():
            p.join()


# The job an encoding process works for: set in the parent just before the pool forks, so the
# children inherit it (and any test's monkeypatching) without pickling the ground truth or palette.
_POOL_JOB: "PredictJob | None" = None


def encoding_pool(job: "PredictJob", n: int) -> ProcessPoolExecutor:
    """``n`` forked processes that write ``job``'s outputs (:func:`_pool_write`), each to its own
    record segment; they use no torch. Call :func:`encoding_pool_done` after its shutdown."""
    global _POOL_JOB
    _POOL_JOB = job
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                               initializer=_pool_init, initargs=(os.getpid(),))


def encoding_pool_done() -> None:
    """Drop the parent's reference to the job the pool worked for."""
    global _POOL_JOB
    _POOL_JOB = None


def _pool_init(parent: int) -> None:
    """In an encoding process: its own record segment; exit when the parent dies (kill -9 leaves no orphans)."""
    _own_writers(_POOL_JOB)
    _exit_with_parent(parent)


def _pool_write(it: Item, image: np.ndarray | None, labels: np.ndarray, confidence: np.ndarray,
                seconds: float) -> tuple[str, str]:
    """In an encoding process: write one image's outputs and record; ``(kind, message)`` as in :meth:`PredictJob.try_write`."""
    return _POOL_JOB.try_write(it, image, Prediction(labels, confidence), seconds)
