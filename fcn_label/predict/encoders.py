"""Encoding processes: forked writers of one pipeline's outputs, each with its own record segment.

The sink reaches them through the fork itself (the pool's initializer argument is inherited, never
pickled, and so is any test's monkeypatching); each process then keeps it as the one sink it serves.
They use no torch.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .discover import Item
from .parallel import exit_with_parent
from .predictor import Prediction
from .sink import Sink
from .tally import Outcome

_sink: Sink | None = None  # in an encoding process only: the sink it writes through (set by _init)


def encoding_pool(sink: Sink, n: int) -> ProcessPoolExecutor:
    """``n`` forked processes that write through ``sink``: submit :func:`encode` to it."""
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init, initargs=(sink, os.getpid()))


def _init(sink: Sink, parent: int) -> None:
    global _sink
    sink.reopen()  # this process's own record segments
    _sink = sink
    # An object store's segments are buffered: put the last lines when the pool ends this process
    # (multiprocessing runs these finalizers at a child's exit; atexit does not run there).
    multiprocessing.util.Finalize(sink, sink.close, exitpriority=10)
    exit_with_parent(parent)


def encode(it: Item, image: np.ndarray | None, labels: np.ndarray, confidence: np.ndarray,
           seconds: float) -> tuple[Outcome, str]:
    """In an encoding process: one image's outputs and record, as :meth:`.sink.Sink.try_write`."""
    return _sink.try_write(it, image, Prediction(labels, confidence), seconds)
