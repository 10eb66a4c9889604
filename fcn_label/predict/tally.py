"""The tally of a predict run: counts, failures and the progress callbacks, shared by every stage."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Callable

from ..guard import Failure
from ..predfolder.records import shown
from .options import JobResult


class Outcome(Enum):
    """What became of one image at the sink."""

    DONE = "done"  # outputs and record written
    FAILED = "failed"  # this image only: a failures.csv row
    STOPPED = "stopped"  # --out takes nothing more (disk full): the run stops, finished images are kept


class Tally:
    """Counts into ``res`` (thread-safe) and tells the caller: ``on_progress(done, total)`` after each
    finished image, ``on_failure(failure)`` after each failure. ``record`` keeps a failure in the
    folder's record store, so that every shard's failures.csv lists it."""

    def __init__(self, res: JobResult, on_progress: Callable[[int, int], None] | None = None,
                 on_failure: Callable[[Failure], None] | None = None,
                 record: Callable[[Failure], None] | None = None):
        self.res = res
        self.on_progress = on_progress or (lambda done, total: None)
        self.on_failure = on_failure or (lambda failure: None)
        self.record = record
        self.lock = threading.Lock()
        self.shown_done = res.skipped  # the count progress shows: skipped images count as done

    @property
    def stopped(self) -> bool:
        return bool(self.res.stopped)

    def start(self) -> None:
        self.on_progress(self.shown_done, self.res.total)

    def fail(self, path: str, stage: str, reason: str) -> None:
        """One failure row; ``reason`` is prefixed with the path unless it already names it."""
        path, reason = shown(str(path)), shown(reason)
        self.failed(Failure(path, stage, reason if reason.startswith(path) else f"{path}: {reason}"))

    def failed(self, f: Failure, record: bool = True) -> None:
        """A failure already worded (``record`` False: a forked process kept its record)."""
        with self.lock:
            self.res.failed.append(f)
        if record and self.record is not None:
            try:
                self.record(f)
            except Exception:  # noqa: BLE001 - --out refused the record: still in this run's failures.csv
                pass
        self.on_failure(f)

    def done(self) -> None:
        with self.lock:
            self.res.done += 1
            self.shown_done += 1
            n = self.shown_done
        self.on_progress(n, self.res.total)

    def stop(self, why: str) -> None:
        with self.lock:
            self.res.stopped = self.res.stopped or why

    def settle(self, path: str, outcome: Outcome, message: str) -> None:
        """The sink's verdict on one image (:meth:`.sink.Sink.try_write`)."""
        if outcome is Outcome.STOPPED:
            self.stop(message)
        elif outcome is Outcome.FAILED:
            self.fail(path, "write", message)
        else:
            self.done()
