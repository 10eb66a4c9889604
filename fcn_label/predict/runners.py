"""Runners: where a predict run's pipelines run. Each is handed the run's parts and its tally.

* :func:`run_here`: one pipeline in this process (a GPU, one inference process, a backend a fork
  cannot copy);
* :func:`run_forked`: forked inference processes (CPU), process k taking every procs-th image from
  k, each a whole pipeline with a one-thread network, its own record segments, and its events sent
  back to the parent's tally. Fork only: the children inherit the parts instead of pickling them.
"""

from __future__ import annotations

import os
import threading
from enum import Enum

import torch

from ..guard import Failure, first_line
from .discover import Item
from .options import JobResult
from .parallel import exit_with_parent
from .pipeline import Parts, Pipeline
from .tally import Tally


def run_here(parts: Parts, todo: list[Item], tally: Tally) -> None:
    """One pipeline in this process."""
    Pipeline(parts, todo, tally).run()


class Event(Enum):
    """What a forked inference process tells the parent."""

    DONE = "done"  # one image finished
    FAILED = "failed"  # one failure row (the child kept its record)
    STOPPED = "stopped"  # the run must stop (with why)
    ENDED = "ended"  # the child finished its share


def _child(parts: Parts, items: list[Item], conn, parent: int) -> None:
    """An inference process: the whole pipeline on ``items``, events sent to the parent; never returns."""
    code = 0
    try:
        exit_with_parent(parent)
        torch.set_num_threads(1)  # GNU OpenMP hangs in a forked child that asks for more
        parts = parts.one_process()
        parts.sink.reopen()
        lock = threading.Lock()

        def send(*msg) -> None:
            with lock:
                conn.send(msg)

        res = JobResult(total=len(items))
        tally = Tally(res, on_progress=lambda done, total: send(Event.DONE),
                      on_failure=lambda f: send(Event.FAILED, tuple(f)), record=parts.sink.record_failure)
        try:
            run_here(parts, items, tally)
        finally:
            parts.sink.close()
        if res.stopped:
            send(Event.STOPPED, res.stopped)
        send(Event.ENDED)
    except BaseException as e:  # noqa: BLE001 - Ctrl-C or a bug: tell the parent, never unwind into its code
        code = 1
        try:
            conn.send((Event.STOPPED, f"an inference process failed ({type(e).__name__}: {first_line(e)}); re-run "
                                      "the same command to finish (finished images are kept), or add "
                                      "--parallel procs=1"))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def run_forked(parts: Parts, todo: list[Item], tally: Tally, procs: int) -> None:
    """Fork ``procs`` inference processes and gather their events into ``tally``.

    Each child decodes in its main thread and writes in two threads, appends to its own record
    segments, and exits with the parent."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    readers: dict = {}
    ended: set = set()
    try:
        for k in range(procs):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(parts, todo[k::procs], w, os.getpid()),
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
                    if r not in ended and not tally.stopped:
                        tally.stop(f"an inference process ended unexpectedly (exit code {p.exitcode}); re-run "
                                   "the same command to finish: finished images are kept and skipped")
                    continue
                event = msg[0]
                if event is Event.DONE:
                    tally.done()
                elif event is Event.FAILED:
                    tally.failed(Failure(*msg[1]), record=False)  # the child kept the failure record
                elif event is Event.STOPPED:
                    tally.stop(msg[1])
                elif event is Event.ENDED:
                    ended.add(r)
    finally:
        for p in readers.values():  # Ctrl-C or an error here: take the children down with us
            p.terminate()
        for p in readers.values():
            p.join()
