"""Decoding in background workers: the DataLoader's dataset, and keeping the heap flat.

Each item is read behind the per-file guard, so any exception one file raises becomes that file's
failure row; a worker only reads headers of very large images and leaves their decoding to the
main process, which bounds the queue between the workers and the model.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..guard import guarded
from ..images import image_size
from .discover import Item
from .predictor import read_for_model

# Decoding workers hand over images up to this many pixels (48 MB as RGB); larger ones are only
# looked at (header) and decoded by the main process when their turn comes. Up to 2 x workers x
# batch-size decoded images wait between the workers and the model, so this bounds that queue
# (about 0.8 GB at the defaults) whatever the size of the photos.
WORKER_MAX_PIXELS = 16_000_000


class _Decode(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], max_pixels: int, worker_max_pixels: int = WORKER_MAX_PIXELS):
        self.items, self.max_pixels, self.worker_max_pixels = list(items), max_pixels, worker_max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int):
        """``(i, RGB array, None)`` or ``(i, None, one-line reason)``; never raises."""
        path = self.items[i].path
        arr, err = guarded(path, read_for_model, path, self.max_pixels)
        return i, arr, err

    def __getitem__(self, i: int):
        """In a worker: the header first (behind the guard), so a huge image is left to the main process."""
        if torch.utils.data.get_worker_info() is not None:
            path = self.items[i].path
            size, err = guarded(path, image_size, path, self.max_pixels)
            if err is not None:
                return i, None, err
            if size[0] * size[1] > self.worker_max_pixels:
                return i, None, None  # too big to queue: the main process decodes it
        return self.decode(i)


# glibc's allocator keeps the freed memory of mixed-size images and batches as holes in its
# heap, so the peak RSS crept up image after image (+400 MB over 200 images, benchmarks/memory.py);
# handing free pages back after every ~8 Mpx predicted keeps it flat.
TRIM_EVERY_PIXELS = 8_000_000
_malloc_trim = None


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim); a no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util

            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _collate(batch):
    return batch[0]
