"""Decoding in background workers: the DataLoader's dataset, and keeping the heap flat.

Each item is read behind the per-file guard, so any exception one file raises becomes that file's
failure row; a worker only reads headers of very large images and leaves their decoding to the
main process, which bounds the queue between the workers and the model.

With ``jpeg_device`` set (``--gpu-jpeg``), a worker hands over a plain JPEG's bytes instead of its
pixels (:class:`JpegBytes`), and the main process decodes them in batches on that device
(:func:`decode_jpegs`): nvJPEG on a GPU, so the host's cores are left the PNG decoding and the
outputs. Anything else (PNG, CMYK, EXIF-rotated, truncated...) is decoded by Pillow as before.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..guard import guarded
from ..images import image_size, plain_jpeg
from .discover import Item
from .predictor import MAX_ASPECT, image_source, read_for_model

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec, with a warning per
# call; they are what this torch ships with, so the warning is noise on a job's console.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

# Decoding workers hand over images up to this many pixels (48 MB as RGB); larger ones are only
# looked at (header) and decoded by the main process when their turn comes. Up to 2 x workers x
# batch-size decoded images wait between the workers and the model, so this bounds that queue
# (about 0.8 GB at the defaults) whatever the size of the photos.
WORKER_MAX_PIXELS = 16_000_000


@dataclass
class JpegBytes:
    """A plain JPEG's file, read and checked (size, aspect) but not decoded: :func:`decode_jpegs` decodes it."""

    data: bytes
    width: int
    height: int


def _read_jpeg(path, max_pixels: int) -> JpegBytes | None:
    found = plain_jpeg(path, max_pixels)
    if found is None:
        return None
    data, w, h = found
    if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
        return None  # read_for_model refuses it, after decoding: with the message a Pillow-decoded run gives
    return JpegBytes(data, w, h)


def decode_jpegs(batch: Sequence[JpegBytes], device: torch.device) -> list[torch.Tensor]:
    """(H, W, 3) uint8 tensors on ``device``, one per JPEG, from one torchvision ``decode_jpeg`` call (one
    nvJPEG batch on a GPU). Raises if any image fails: the caller then decodes each with Pillow."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # torchvision's CUDA decoder writes on its own stream into memory allocated on ours, without
        # waiting for our queued kernels (pytorch/vision#9606): let them finish first.
        torch.cuda.current_stream(device).synchronize()
    data = [torch.frombuffer(bytearray(b.data), dtype=torch.uint8) for b in batch]
    out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    for b, t in zip(batch, out):
        if tuple(t.shape) != (3, b.height, b.width):
            raise ValueError(f"decoded to {tuple(t.shape)}, header says {b.width}x{b.height}")
    return [t.permute(1, 2, 0) for t in out]


def as_array(image) -> np.ndarray:
    """A host array of an image the job holds (a device tensor from :func:`decode_jpegs`, or an array)."""
    return image.cpu().numpy() if isinstance(image, torch.Tensor) else image


class DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], max_pixels: int, worker_max_pixels: int = WORKER_MAX_PIXELS,
                 jpeg_bytes: bool = False):
        self.items, self.max_pixels, self.worker_max_pixels = list(items), max_pixels, worker_max_pixels
        self.jpeg_bytes = jpeg_bytes  # hand plain JPEGs over undecoded (JpegBytes), for decode_jpegs

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int):
        """``(i, RGB array, None)`` or ``(i, None, one-line reason)``; never raises."""
        path = self.items[i].path
        arr, err = guarded(path, read_for_model, path, self.max_pixels)
        return i, arr, err

    def __getitem__(self, i: int):
        """In a worker: the header first (behind the guard), so a huge image is left to the main process.
        A remote input is fetched once here and its bytes read for the header and the pixels."""
        path = self.items[i].path
        src, err = guarded(path, image_source, path)
        if err is not None:
            return i, None, err
        return self._get(i, src)

    def _get(self, i: int, path):
        if self.jpeg_bytes:
            found, err = guarded(path, _read_jpeg, path, self.max_pixels)
            if err is not None:
                return i, None, err
            if found is not None and found.width * found.height <= self.worker_max_pixels:
                return i, found, None
        if torch.utils.data.get_worker_info() is not None:
            size, err = guarded(path, image_size, path, self.max_pixels)
            if err is not None:
                return i, None, err
            if size[0] * size[1] > self.worker_max_pixels:
                return i, None, None  # too big to queue: the main process decodes it (fetching it again)
        arr, err = guarded(path, read_for_model, path, self.max_pixels)
        return i, arr, err


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


def collate_one(batch):
    return batch[0]
