"""One boundary per input file: whatever goes wrong with one file becomes a failure row, never the end of a batch.

Every per-file step (header read, decode, EXIF, mask decode, COCO entry, record
read) in predict, evaluate and finetune's data check runs behind
:func:`guarded`. Our own :class:`~fcn_label.images.InputError` already names the
file and the fix; anything else (a decoder bug, Pillow's zTXt limit, a
MemoryError) is reported as its type and the first line of its message.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, NamedTuple, TypeVar

from .images import InputError

T = TypeVar("T")

# The one schema of every verb's failures.csv (docs/prediction-folder.md lists the stages).
FAILURE_COLUMNS = ("path", "stage", "reason")


class Failure(NamedTuple):
    """One failures.csv row: the file, the stage that refused it, and the one-line reason (which names the file)."""

    path: str
    stage: str
    reason: str


def write_failures_csv(path: str | os.PathLike, rows: Iterable[Failure]) -> None:
    """``path,stage,reason`` rows, written atomically through the one CSV writer."""
    import pandas as pd

    from .images import write_csv_atomic

    write_csv_atomic(pd.DataFrame([tuple(r) for r in rows], columns=list(FAILURE_COLUMNS), dtype=object), path)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def failure_message(path: object, e: BaseException) -> str:
    """The one line a failure row shows for ``e`` raised while handling ``path``."""
    if isinstance(e, InputError):
        return str(e)
    return f"{path}: {type(e).__name__}: {first_line(e)}; re-export or remove it"


def guarded(path: object, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, str | None]:
    """``(fn(*args), None)``, or ``(None, one-line reason)`` when it raises any Exception."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # the boundary: one file must not stop the batch
        return None, failure_message(path, e)
