"""Reading images and masks, writing outputs atomically.

Every reader raises :class:`InputError` with a one-line message that names the
file and what to do, so batch jobs can report it and go on.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

# Pillow's own bomb guard is a warning at 89 Mpx and an error at 179 Mpx; we
# make the limit explicit and configurable and turn it into a clear error.
DEFAULT_MAX_PIXELS = 250_000_000

_UMASK = os.umask(0)
os.umask(_UMASK)


_PIL_GLOBALS = threading.Lock()

# Pillow warns about oddities it recovers from (corrupt EXIF data, truncated metadata): on an
# unattended job's console that is multi-line noise, not news. Filtered once here rather than
# with catch_warnings around every decode, which swaps the process-wide filter list and is not
# safe in the threads evaluate decodes in.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def check_pixels(name: object, w: int, h: int, max_pixels: int) -> None:
    """The decompression-bomb guard, from a header's (or a COCO entry's) size before any pixel is decoded."""
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels:,} pixels; "
                         "raise --max-pixels if the image is genuine")


class Blob:
    """An image file's bytes fetched from an object store, and the name messages show for it (its URL,
    credentials stripped): every reader here takes one where it takes a path, decodes it with the same
    code and refuses it with the same one-line messages, naming the URL rather than a temporary file."""

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name

    def __str__(self) -> str:
        return self.name

    def read_bytes(self) -> bytes:
        return self.data


def _open_blob(blob: Blob, max_pixels: int) -> Image.Image:
    """:func:`_open` for fetched bytes: the checks a file's bytes allow (no stat), the same messages."""
    if not blob.data:
        raise InputError(f"{blob.name}: empty file (0 bytes); re-export or remove it")
    import io

    return _open_pil(blob, io.BytesIO(blob.data), max_pixels)


def _open(path: Path | Blob, max_pixels: int) -> Image.Image:
    if isinstance(path, Blob):
        return _open_blob(path, max_pixels)
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop; fix or remove the link") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise InputError(f"{path}: broken symbolic link (to {os.readlink(path)}); fix or remove it") from None
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check the path and permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):  # a named pipe would block the whole job on open()
        raise InputError(f"{path}: not a regular file (a pipe, socket or device); remove it from the inputs")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); re-export or remove it")
    return _open_pil(path, path, max_pixels)


def _open_pil(path, source, max_pixels: int) -> Image.Image:
    """Pillow's open of ``source`` (a path, or a file object of fetched bytes) under the bomb guard;
    messages name ``path``."""
    # Pillow's bomb limit and the warnings filter are process-wide: evaluate decodes in threads,
    # so swapping them is serialised (only the header parse happens under the lock).
    with _PIL_GLOBALS:
        old = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": noise on the console, not an error
                im = Image.open(source)
            w, h = im.size
            try:
                check_pixels(path, w, h, max_pixels)
            except InputError:
                im.close()
                raise
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


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone, with the same checks and messages as :func:`read_image`."""
    path = _as_source(path)
    with _open(path, max_pixels) as im:
        return im.size


def _as_source(path) -> Path | Blob:
    return path if isinstance(path, Blob) else Path(path)


def plain_jpeg(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int] | None:
    """``(file bytes, width, height)`` of a JPEG that a bare JPEG decoder (torchvision's decode_jpeg,
    nvJPEG on a GPU) turns into the picture :func:`read_image` gives; None for any other file, which
    :func:`read_image` must decode.

    Plain means: YCbCr or greyscale (no CMYK, no Adobe transform marker), upright (no EXIF rotation,
    which bare decoders ignore), and complete (ends with the EOI marker: a truncated file goes to
    Pillow and gets its usual message). Raises :class:`InputError` like :func:`image_size`."""
    path = _as_source(path)
    with _open(path, max_pixels) as im:
        if im.format != "JPEG" or im.mode not in ("RGB", "L") or "adobe" in im.info:
            return None
        if im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
            return None
        w, h = im.size
    data = path.read_bytes()
    if not data.endswith(b"\xff\xd9"):
        return None
    return data, w, h


_spng = None  # pyspng (libspng), the optional `png` extra: False when it is not installed

# 8-bit PNG colour types libspng turns into RGB exactly as Pillow's convert("RGB") does (greyscale,
# RGB, palette, RGBA: alpha and tRNS dropped, no gamma applied); tested pixel for pixel against
# Pillow. 16-bit and sub-byte images, Adam7 interlacing and files with an eXIf chunk (orientation)
# or an acTL chunk (APNG) take Pillow's path.
_SPNG_COLOUR_TYPES = (0, 2, 3, 6)
# Above this, Pillow decodes: libspng wants the whole file in memory beside the pixels, and the
# decode time of a huge photo is dwarfed by its tiled inference anyway (the memory benchmark's path).
_SPNG_MAX_PIXELS = 16_000_000


def _png_fast(path: Path | Blob, w: int, h: int) -> np.ndarray | None:
    """An 8-bit PNG decoded by libspng, faster than Pillow with the same pixels (docs: Performance);
    None where Pillow must decode it (not installed,
    a case above, or any error: Pillow then gives the file's usual message)."""
    global _spng
    if _spng is None:
        try:
            import pyspng
            _spng = pyspng
        except Exception:  # not installed, or a broken build: Pillow decodes everything
            _spng = False
    if _spng is False:
        return None
    data = path.read_bytes()
    if (len(data) < 33 or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in _SPNG_COLOUR_TYPES
            or data[28] != 0):
        return None
    pos = 8
    while pos + 8 <= len(data):  # chunk headers only: a few dozen steps for a frame
        kind = data[pos + 4:pos + 8]
        if kind == b"IEND":
            break
        if kind in (b"eXIf", b"acTL"):
            return None
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    try:
        arr = _spng.load(data, format="RGB")
    except Exception:
        return None
    if arr.dtype != np.uint8 or arr.shape != (h, w, 3):
        return None
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) as a viewer shows it: EXIF orientation applied, first frame only.

    Greyscale, palette, alpha, CMYK and 16-bit images are converted to 8-bit RGB
    (alpha is dropped, i.e. composited on nothing: the colour channels are kept).
    ``path`` may be a :class:`Blob` (an object's fetched bytes).
    """
    path = _as_source(path)
    im = _open(path, max_pixels)
    if im.format == "PNG" and im.size[0] * im.size[1] <= _SPNG_MAX_PIXELS:
        fast = _png_fast(path, *im.size)
        if fast is not None:
            im.close()
            return fast
    try:
        arr = _to_rgb(im, close_input=True)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated image ({e}); re-export or remove it") from None
    finally:
        im.close()
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{path}: decoded to an empty image; re-export or remove it")
    return np.ascontiguousarray(arr)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """An already opened Pillow image -> RGB uint8 (H, W, 3), converted exactly as :func:`read_image`
    converts a file (EXIF orientation, first frame, 16-bit, palette, alpha): for callers handed an
    image rather than a path (an annotation tool's auto-annotation function). ``im`` is left open."""
    arr = _to_rgb(im, close_input=False)
    return np.ascontiguousarray(arr)


def _to_rgb(im: Image.Image, close_input: bool) -> np.ndarray:
    """The conversion steps of :func:`read_image`; intermediate images are closed as soon as the next
    exists (huge photos: one copy at a time), the input only when ``close_input``."""
    first = im

    def step(new: Image.Image) -> None:
        nonlocal im
        if new is not im:
            if im is not first or close_input:
                im.close()
            im = new

    try:
        im.seek(0)
        im.load()
        if im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):  # exif_transpose copies even when upright
            step(ImageOps.exif_transpose(im))
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im)
            if a.size and a.max() > 255:  # 16-bit range: 65535 -> 255, exactly (v * 257 -> v)
                a = a.astype(np.uint32 if a.dtype == np.uint16 else np.int64) * 255 // 65535
            step(Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="L"))
        elif im.mode == "F":
            a = np.asarray(im, dtype=np.float32)
            a = a / a.max() * 255.0 if a.size and a.max() > 0 else a
            step(Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="L"))
        if im.mode == "P" and "transparency" in im.info:
            step(im.convert("RGBA"))
        if im.mode != "RGB":
            step(im.convert("RGB"))
        return np.array(im, dtype=np.uint8)
    finally:
        if im is not first:
            im.close()


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


# Temporary files are named ``.<name>.<random>.<host>~<pid>.tmp`` so that a later run can tell
# the leftovers of a killed process (same host, pid gone) from the files of a live one.
HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32] or "host"
_TMP_RE = re.compile(r"^\..*\.(?P<host>[A-Za-z0-9-]*)~(?P<pid>\d+)\.tmp$")


def _short(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` UTF-8 bytes without splitting a character."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    A killed process leaves at most a hidden ``.tmp`` file (see :func:`remove_stale_temp`),
    never a half-written output under the final name. The temporary name stays within
    the 255-byte file-name limit whatever the length of ``final``'s name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_short(final.name, 100)}.", suffix=f".{HOST}~{os.getpid()}.tmp",
                               dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still write. A zombie cannot: a run killed with -9 and
    re-run at once finds its forked children as zombies until init reaps them, and their temp files
    must go (on Linux, read from /proc; elsewhere a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def writer_gone(host: str, pid: int) -> bool:
    """Whether the process ``pid`` of ``host`` that named a temporary file or folder is gone (only this
    host's processes can be told; another host's count as alive)."""
    return host == HOST and not _pid_alive(pid)


def remove_stale_temp(folder: str | os.PathLike) -> int:
    """Delete temporary files under ``folder`` left by killed processes of this host; return how many.

    Files of live processes (a concurrent run on the same folder) and of other hosts
    (a shared network folder) are left alone.
    """
    return sum(_remove_stale(dirpath, filenames) for dirpath, _, filenames in os.walk(folder))


def remove_stale_temp_in(folder: str | os.PathLike) -> int:
    """:func:`remove_stale_temp` for ``folder`` itself, not its sub-folders (a missing folder: 0)."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.endswith(".tmp")]
    except OSError:
        return 0
    return _remove_stale(os.fspath(folder), names)


def _remove_stale(dirpath: str, names) -> int:
    """Delete the temporary files among ``names`` whose writer (this host, pid in the name) is gone."""
    removed = 0
    for name in names:
        m = _TMP_RE.match(name)
        if m and m["host"] == HOST and not _pid_alive(int(m["pid"])):
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(df, path: str | os.PathLike, index: bool = False, float_format: str | None = None,
                     lineterminator: str = "\n", na_rep: str = "") -> None:
    """The one way reports are written as CSV: a pandas DataFrame, '\\n' line ends, temp file + rename."""
    import io

    buf = io.StringIO()
    df.to_csv(buf, index=index, float_format=float_format, lineterminator=lineterminator, na_rep=na_rep)
    write_text_atomic(path, buf.getvalue())
