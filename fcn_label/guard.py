"""One boundary per input file: whatever goes wrong with one file becomes a failure row, never the end of a batch.

Every per-file step (header read, decode, EXIF, mask decode, COCO entry, record
read) in predict, evaluate and finetune's data check runs behind
:func:`guarded`. Our own :class:`~fcn_label.images.InputError` already names the
file and the fix; anything else (a decoder bug, Pillow's zTXt limit, a
MemoryError) is reported as its type and the first line of its message.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from .images import InputError

T = TypeVar("T")


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
