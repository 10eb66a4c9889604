"""A generated corpus of bad and odd image inputs, each with the exact behaviour expected of predict.

Every case is written under ``root`` by :func:`build`; an ``Ok`` case carries the RGB
pixels the model must see, decoded here independently of fcn_label (raw PIL plus
numpy flips for EXIF, palette lookups by hand), and a ``Fail`` case the words its
one-line message must contain.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from support.helpers import rand_image


@dataclass
class Ok:
    kind: str
    path: Path  # input file as discovered
    out: str  # mask path relative to --out
    rgb: np.ndarray  # what the model must be fed


@dataclass
class Fail:
    kind: str
    path: Path  # the path the message and failures.csv must name
    words: str  # the message must contain this (the reason and its fix)


# -- hand-made files -----------------------------------------------------------------------------


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written without PIL: ``raw`` is the filtered scanlines (filter byte 0 per row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def rows(a: np.ndarray) -> bytes:
    """Scanlines with filter type 0 (none) for a (H, W, C) big-endian array."""
    h = a.shape[0]
    flat = a.reshape(h, -1).view(np.uint8).reshape(h, -1)
    return b"".join(b"\x00" + r.tobytes() for r in flat)


def jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame header so the JPEG claims another size (no pixels change)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def decoded(path: Path) -> np.ndarray:
    """PIL's own decode, first frame, without EXIF handling: the raw stored pixels."""
    with Image.open(path) as im:
        im.seek(0)
        return np.array(im.convert("RGB"))


# EXIF orientation -> numpy transform of the stored pixels (TIFF/EXIF 2.32, tag 0x0112)
ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


# -- the corpus ----------------------------------------------------------------------------------


def build(root: Path) -> tuple[Path, list[Path], list]:
    """Write the corpus; return (input folder, extra inputs to pass, cases)."""
    d = root / "in"
    d.mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    cases: list = []
    base = rand_image(24, 32, 1)

    def ok(kind, name, rgb, out=None, path=None):
        p = path or d / name
        cases.append(Ok(kind, p, out or str(Path(name).with_suffix(".png")), np.ascontiguousarray(rgb)))

    def fail(kind, name, words, data=None):
        p = d / name
        if data is not None:
            p.write_bytes(data)
        cases.append(Fail(kind, p, words))

    # ---- files that cannot be used
    fail("zero-byte file", "zero.jpg", "empty file (0 bytes)", b"")
    fail("text file named .jpg", "text.jpg", "not a recognised image format", b"this is a text file\n" * 20)
    jpg = jpeg_bytes(rand_image(64, 64, 2))
    fail("truncated JPEG", "truncated.jpg", "corrupt or truncated image", jpg[: len(jpg) // 2])
    png = png_bytes(32, 24, 8, 2, rows(base))
    fail("truncated PNG", "truncated.png", "corrupt or truncated image", png[: len(png) - 40])
    bad = bytearray(png)
    i = bytes(bad).index(b"IDAT") + 10
    bad[i] ^= 0xFF  # one flipped bit pattern inside the compressed data: the CRC no longer matches
    fail("corrupt PNG CRC", "bad_crc.png", "corrupt or truncated image", bytes(bad))
    fail("PNG claiming 100000x100000 pixels", "bomb.png", "100000x100000 pixels exceeds the limit",
         png_bytes(100000, 100000, 8, 2, b"\x00" * 10))
    fail("JPEG claiming 65000x65000 pixels", "bomb.jpg", "65000x65000 pixels exceeds the limit",
         patch_jpeg_size(jpeg_bytes(base), 65000, 65000))
    fail("PNG claiming 0x0 pixels", "zero_size.png", "not a recognised image format", png_bytes(0, 0, 8, 2, b""))
    fail("TIFF header then garbage", "garbage.tif", "not a recognised image format", b"II*\x00" + os.urandom(200))
    fail("JPEG markers only", "soi_eoi.jpg", "not a recognised image format", b"\xff\xd8\xff\xd9")
    fail("GIF header only", "header.gif", "not a recognised image format", b"GIF89a\x10\x00\x10\x00\x00\x00\x00")
    fail("square brackets in a bad file's name", "photo [red] 1.jpg", "not a recognised image format", b"x" * 50)
    # a loop of symbolic links, a dangling link, a named pipe: must fail at once, never hang
    os.symlink(d / "loop_b.jpg", d / "loop_a.jpg")
    os.symlink(d / "loop_a.jpg", d / "loop_b.jpg")
    cases.append(Fail("symlink loop", d / "loop_a.jpg", "symbolic link loop"))
    cases.append(Fail("symlink loop", d / "loop_b.jpg", "symbolic link loop"))
    os.symlink(d / "nowhere.png", d / "dangling.png")
    cases.append(Fail("dangling symlink", d / "dangling.png", "broken symbolic link"))
    os.mkfifo(d / "pipe.jpg")
    cases.append(Fail("named pipe named .jpg", d / "pipe.jpg", "not a regular file"))
    # the folder links to itself: walking must not follow it
    os.symlink(d, d / "self_loop")

    # ---- odd but valid images
    ok("1x1 image", "one.png", rand_image(1, 1, 3))
    Image.fromarray(cases[-1].rgb).save(cases[-1].path)
    ok("1xN image", "row.png", rand_image(1, 300, 4))
    Image.fromarray(cases[-1].rgb).save(cases[-1].path)
    ok("Nx1 image", "column.png", rand_image(300, 1, 5))
    Image.fromarray(cases[-1].rgb).save(cases[-1].path)

    g16 = (base[..., 0].astype(">u2") * 257)  # 16-bit value v*257 is 8-bit v exactly
    (d / "grey16.png").write_bytes(png_bytes(32, 24, 16, 0, rows(g16[..., None])))
    ok("16-bit greyscale PNG", "grey16.png", np.repeat(base[..., :1], 3, axis=2))
    (d / "rgb48.png").write_bytes(png_bytes(32, 24, 16, 2, rows(base.astype(">u2") * 257 + 3)))
    ok("48-bit RGB PNG", "rgb48.png", base)

    cmyk = Image.fromarray(base).convert("CMYK")
    cmyk.save(d / "cmyk.jpg", quality=95)
    ok("CMYK JPEG", "cmyk.jpg", decoded(d / "cmyk.jpg"), out="cmyk_jpg.png")
    cmyk.save(d / "cmyk.tif")
    ok("CMYK TIFF", "cmyk.tif", base, out="cmyk_tif.png")  # k = 0, so RGB -> CMYK -> RGB is exact

    pal = np.array([[i * 7 % 256, i * 13 % 256, i * 29 % 256] for i in range(256)], np.uint8)
    idx = (np.arange(24 * 32).reshape(24, 32) % 16).astype(np.uint8)
    pim = Image.fromarray(idx, mode="P")
    pim.putpalette(pal.ravel().tolist())
    pim.info["transparency"] = 3
    pim.save(d / "palette_trns.png", transparency=3)
    ok("palette with transparency", "palette_trns.png", pal[idx])
    la = Image.fromarray(base[..., 0]).convert("LA")
    la.putalpha(Image.fromarray((idx * 16).astype(np.uint8)))
    la.save(d / "la.png")
    ok("LA (grey + alpha)", "la.png", np.repeat(base[..., :1], 3, axis=2))
    rgba = np.dstack([base, (idx * 16).astype(np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(d / "rgba.png")
    ok("RGBA (alpha dropped)", "rgba.png", base)
    Image.fromarray(base[..., 1] > 128).save(d / "bilevel.png")
    ok("1-bit bilevel PNG", "bilevel.png", np.repeat(np.where(base[..., 1:2] > 128, 255, 0), 3, 2).astype(np.uint8))

    frames = [Image.fromarray(rand_image(24, 32, 10 + k)).quantize(64) for k in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("animated GIF (first frame)", "animated.gif", decoded(d / "animated.gif"))
    pages = [Image.fromarray(rand_image(24, 32, 20 + k)) for k in range(3)]
    pages[0].save(d / "pages.tif", save_all=True, append_images=pages[1:])
    ok("multi-page TIFF (first page)", "pages.tif", np.asarray(pages[0]))

    raw = rand_image(24, 40, 30)
    for o, f in ORIENT.items():
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(raw).save(d / f"exif{o}.jpg", quality=95, exif=exif)
        ok(f"EXIF orientation {o}", f"exif{o}.jpg", f(decoded(d / f"exif{o}.jpg")))
    broken_exif = jpeg_bytes(base, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")
    (d / "bad_exif.jpg").write_bytes(broken_exif)
    ok("corrupt EXIF block", "bad_exif.jpg", decoded(d / "bad_exif.jpg"))
    Image.fromarray(base).save(d / "progressive.jpg", quality=95, progressive=True)
    ok("progressive JPEG", "progressive.jpg", decoded(d / "progressive.jpg"))
    (d / "trailing.png").write_bytes(png + b"\x00garbage after IEND" * 10)
    ok("bytes after PNG end", "trailing.png", base)
    (d / "png_inside.jpg").write_bytes(png)
    ok("PNG content named .jpg", "png_inside.jpg", base)
    Image.fromarray(base).save(d / "UPPER.PNG")
    ok("upper-case extension", "UPPER.PNG", base)

    Image.fromarray(base).save(d / "café 日本 ü.png")
    ok("unicode name", "café 日本 ü.png", base)
    latin1 = os.fsdecode(b"caf\xe9 latin-1.png")  # not UTF-8: the bytes survive only as surrogates
    Image.fromarray(base).save(d / latin1)
    ok("non-UTF-8 name (Latin-1 bytes)", latin1, base, out="caf\\xe9 latin-1.png")
    fail("non-UTF-8 name of a bad file", os.fsdecode(b"broken\xff.jpg"), "not a recognised image format", b"junk")
    Image.fromarray(base).save(d / "  spaced  name .png")
    ok("spaces in name", "  spaced  name .png", base)
    long = "L" * 248 + ".png"  # 252 bytes: the longest that leaves room for '.json' in the record name
    Image.fromarray(base).save(d / long)
    ok("very long name (252 bytes)", long, base, out="L" * 248 + ".png")
    longest = "M" * 250 + ".tiff"  # 255 bytes, the most a Linux file name can hold
    Image.fromarray(base).save(d / longest)
    ok("longest name (255 bytes)", longest, base, out="<shortened>")
    wide = "日" * 83 + ".jpg"  # 253 bytes of UTF-8
    Image.fromarray(base).save(d / wide, quality=95)
    ok("long multi-byte name", wide, decoded(d / wide), out="<shortened>")

    # the same stem under several extensions, plus a name that collides with a disambiguated one
    Image.fromarray(rand_image(24, 32, 40)).save(d / "dup.png")
    Image.fromarray(rand_image(16, 16, 41)).save(d / "dup.jpg", quality=95)
    Image.fromarray(rand_image(20, 24, 42)).save(d / "dup_jpg.bmp")
    ok("duplicate stem (png)", "dup.png", np.asarray(Image.open(d / "dup.png")), out="dup_png.png")
    ok("duplicate stem (jpg)", "dup.jpg", decoded(d / "dup.jpg"), out="dup_jpg.png")
    ok("name equal to a disambiguated one", "dup_jpg.bmp", np.asarray(Image.open(d / "dup_jpg.bmp")), out="dup_jpg~2.png")

    # a directory named like an image, holding an image; and an image whose mask name is that directory
    (d / "album.png").mkdir()
    Image.fromarray(base).save(d / "album.png" / "inner.jpg", quality=95)
    ok("directory named like an image", "album.png/inner.jpg", decoded(d / "album.png" / "inner.jpg"))
    Image.fromarray(base).save(d / "album.bmp")
    ok("mask name equal to a folder name", "album.bmp", base, out="album~2.png")

    # a link to an image outside the folder: read it, write its mask inside --out
    Image.fromarray(base).save(outside / "target.png")
    os.symlink(outside / "target.png", d / "linked.png")
    ok("symlink to an image elsewhere", "linked.png", base)

    # ignored without a word: hidden files, non-image files
    Image.fromarray(base).save(d / ".hidden.png")
    (d / "notes.txt").write_text("not an image list: .txt files inside folders are not read\n")

    # a file list with a missing entry, a '..' entry and an absolute entry
    lists = root / "lists" / "deep"
    lists.mkdir(parents=True)
    Image.fromarray(rand_image(24, 32, 50)).save(outside / "via_dotdot.png")
    Image.fromarray(rand_image(24, 32, 51)).save(outside / "via_absolute.png")
    (lists / "files.txt").write_text(
        "# comment\n../../outside/via_dotdot.png\n" f"{(outside / 'via_absolute.png').resolve()}\nmissing.png\n")
    cases.append(Ok("list entry with '..'", outside / "via_dotdot.png", "<list>", np.asarray(Image.open(outside / "via_dotdot.png"))))
    cases.append(Ok("absolute list entry", (outside / "via_absolute.png").resolve(), "<list>",
                    np.asarray(Image.open(outside / "via_absolute.png"))))
    cases.append(Fail("missing list entry", lists / "missing.png", "files.txt:4 but not found"))
    return d, [lists / "files.txt"], cases
