"""Reading images and masks, writing outputs atomically.

Every reader raises :class:`InputError` with a one-line message that names the
file and what to do, so batch jobs can report it and go on.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

# Pillow's own bomb guard is a warning at 89 Mpx and an error at 179 Mpx; we
# make the limit explicit and configurable and turn it into a clear error.
DEFAULT_MAX_PIXELS = 250_000_000

_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(Exception):
    """A user-side problem with one input file; the message is shown as is."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check the path and permissions") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes); re-export or remove it")
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        w, h = im.size
        if w * h > max_pixels:
            im.close()
            raise InputError(
                f"{path}: {w}x{h} pixels exceeds the limit of {max_pixels:,} pixels; "
                "raise --max-pixels if the image is genuine"
            )
        return im
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a recognised image format; check the file is an image") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied; make the file readable") from None
    except OSError as e:
        raise InputError(f"{path}: cannot open image ({e}); re-export or remove it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) as a viewer shows it: EXIF orientation applied, first frame only.

    Greyscale, palette, alpha, CMYK and 16-bit images are converted to 8-bit RGB
    (alpha is dropped, i.e. composited on nothing: the colour channels are kept).
    """
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        with im:
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                hi = a.max() if a.size else 0
                a = (a / (65535.0 if hi > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
                im = Image.fromarray(a, mode="L")
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float64)
                a = a / a.max() * 255.0 if a.size and a.max() > 0 else a
                im = Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="L")
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated image ({e}); re-export or remove it") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{path}: decoded to an empty image; re-export or remove it")
    return np.ascontiguousarray(arr)


def read_mask(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Class-index mask (H, W) uint8 from a palette ('P') or greyscale ('L') PNG.

    Palette PNGs hold class indices directly (VOC); colour RGB masks are refused
    because their colours would need a palette to be read as classes.
    """
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        with im:
            im.load()
            if im.mode in ("P", "L"):
                arr = np.array(im, dtype=np.uint8)
            elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
                a = np.asarray(im)
                if a.size and a.max() > 255:
                    raise InputError(f"{path}: mask values up to {a.max()} do not fit 8-bit class indices")
                arr = a.astype(np.uint8)
            elif im.mode == "LA":
                arr = np.asarray(im.getchannel(0), dtype=np.uint8)
            else:
                raise InputError(
                    f"{path}: mask is mode {im.mode!r}; expected a palette ('P') or greyscale ('L') "
                    "PNG holding class indices"
                )
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated mask ({e}); re-export or remove it") from None
    return np.ascontiguousarray(arr)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    A killed process leaves at most a hidden ``.tmp`` file, never a half-written
    output under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
