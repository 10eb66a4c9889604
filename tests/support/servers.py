"""Waiting for, and stopping, a server that a test started in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_until_up(check: Callable[[], T], proc: subprocess.Popen, log: Path, what: str, timeout: float,
                  poll: float = 0.5) -> T:
    """``check()``'s result once it stops raising OSError (refused, reset, an HTTP error); the test fails
    with the tail of ``log`` if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start: " + log.read_text()[-2000:])
        time.sleep(poll)


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """End the process group a test started (the server and its workers): SIGTERM, then SIGKILL after ``grace``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
