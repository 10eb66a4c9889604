"""Waiting for a server that a test started in its own process group."""

from __future__ import annotations

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
