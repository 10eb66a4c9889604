"""Seeded mutation fuzzer: damaged images of every format through the real `fcn-label predict` and `evaluate`.

Valid seed files of every format predict reads (PNG RGB / palette / 16-bit, JPEG baseline /
progressive / CMYK / EXIF, GIF, TIFF, WebP, BMP, index masks) are mutated by bit flips, byte
runs, truncation, chunk duplication and splicing, edited header dimensions, oversized text /
ICC / EXIF chunks and compressed-chunk bombs. One round writes its mutants to disk and runs
ONE predict and ONE evaluate process over all of them, then checks what a user relies on:
exit status 0 or 1, no traceback, every input ends as a mask or a failures.csv row naming it,
the processes' peak memory, and the seconds spent per image.

The test suite runs one small round (tests/robustness/test_fuzz.py). The long run:

    python tests/robustness/fuzz.py --mutants 5000 --seed 1

prints the figures the README's Robustness section quotes (tried, decoded, refused, crashes)
and exits 1 on any crash. Nothing here imports fcn_label's readers: the verdicts come from
the CLI's own reports, read back as plain CSV.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIG = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHUNK = 1024 * 1024  # Pillow's PngImagePlugin.MAX_TEXT_CHUNK
NUM_CLASSES = 5
# The fuzz runs pass --max-pixels: the decompression-bomb guard is what bounds memory and time
# for headers that claim huge sizes (a CPU model at 250 Mpx would measure the model, not decoding).
MAX_PIXELS = 4_000_000


# ---------------------------------------------------------------------------------------------
# Seeds


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """(tag, payload) of each whole chunk, or None when ``data`` is not a PNG."""
    if not data.startswith(PNG_SIG):
        return None
    pos, out = 8, []
    while pos + 12 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        if pos + 12 + n > len(data):
            break
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIG + b"".join(png_chunk(t, d) for t, d in chunks)


def ztxt_bomb_png(h: int = 24, w: int = 32) -> bytes:
    """A valid PNG whose zTXt chunk inflates past Pillow's MAX_TEXT_CHUNK (the issue #12 killer).

    Pillow refuses it with ``ValueError: Decompressed data too large`` while reading the
    header, before any pixel, as its own test image does.
    """
    chunks = png_chunks(_save(Image.fromarray(_smooth(h, w, 7)), "PNG"))
    bomb = (b"Comment\x00\x00", zlib.compress(b"A" * (MAX_TEXT_CHUNK + 4096), 9))
    return png_join([chunks[0], (b"zTXt", bomb[0] + bomb[1])] + chunks[1:])


def seeds() -> dict[str, bytes]:
    """Valid files, one per format and flavour: name (with its extension) -> bytes."""
    out: dict[str, bytes] = {}
    rgb = _smooth(24, 32, 1)
    im = Image.fromarray(rgb)
    out["rgb.png"] = _save(im, "PNG")
    pal = im.quantize(32)
    out["palette.png"] = _save(pal, "PNG")
    out["palette_trns.png"] = _save(pal, "PNG", transparency=3)
    out["grey16.png"] = _save(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG")
    out["rgba.png"] = _save(im.convert("RGBA"), "PNG")
    meta = Image.new("RGB", (32, 24))
    meta.paste(im)
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Comment", "fuzz seed")
    info.add_itxt("Description", "zipped text " * 40, zip=True)
    out["text_icc.png"] = _save(meta, "PNG", pnginfo=info, icc_profile=b"\0" * 128 + b"acsp" + b"\0" * 400)
    out["baseline.jpg"] = _save(im, "JPEG", quality=90)
    out["progressive.jpg"] = _save(im, "JPEG", quality=90, progressive=True)
    out["cmyk.jpg"] = _save(im.convert("CMYK"), "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif.jpg"] = _save(Image.fromarray(_smooth(20, 36, 2)), "JPEG", quality=90, exif=exif)
    out["grey.jpg"] = _save(im.convert("L"), "JPEG", quality=90)
    frames = [Image.fromarray(_smooth(24, 32, 10 + k)).quantize(16) for k in range(3)]
    out["animated.gif"] = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["raw.tif"] = _save(im, "TIFF")
    out["lzw.tif"] = _save(im, "TIFF", compression="tiff_lzw")
    out["cmyk.tiff"] = _save(im.convert("CMYK"), "TIFF")
    out["lossy.webp"] = _save(im, "WEBP", quality=80)
    out["lossless.webp"] = _save(im, "WEBP", lossless=True)
    out["rgb.bmp"] = _save(im, "BMP")
    out["palette.bmp"] = _save(pal, "BMP")
    idx = (np.arange(24 * 32).reshape(24, 32) // 7 % NUM_CLASSES).astype(np.uint8)
    out["mask_l.png"] = _save(Image.fromarray(idx, mode="L"), "PNG")
    pm = Image.fromarray(idx, mode="P")
    pm.putpalette([c for i in range(256) for c in (i * 40 % 256, i * 90 % 256, i * 150 % 256)])
    out["mask_p.png"] = _save(pm, "PNG")
    out["mask.bmp"] = _save(pm, "BMP")
    return out


def seed_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


# ---------------------------------------------------------------------------------------------
# Mutators: (rng, data, name, all seeds) -> bytes


def bit_flips(rng, data, name, pool):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def byte_run(rng, data, name, pool):
    b = bytearray(data)
    i = rng.randrange(len(b))
    n = rng.choice((1, 2, 4, 8, 16, 64, 256))
    fill = rng.choice([bytes([0]) * n, bytes([255]) * n, bytes([rng.randrange(256)]) * n, rng.randbytes(n)])
    how = rng.choice(("overwrite", "insert", "delete"))
    if how == "overwrite":
        b[i:i + n] = fill[: len(b) - i]
    elif how == "insert":
        b[i:i] = fill
    else:
        del b[i:i + n]
    return bytes(b) or b"\0"


def truncate(rng, data, name, pool):
    return data[: rng.randrange(1, len(data))] if len(data) > 1 else b""


def _segments(data: bytes):
    """JPEG marker segments before the scan: (start, end) byte ranges; None when not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, segs = 2, []
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        n = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segs.append((pos, pos + 2 + n, marker))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos += 2 + n
    return segs


def chunk_duplicate(rng, data, name, pool):
    """Repeat, drop or move one PNG chunk / JPEG segment (any format: a byte range)."""
    chunks = png_chunks(data)
    if chunks:
        chunks = list(chunks)
        i = rng.randrange(len(chunks))
        op = rng.choice(("dup", "drop", "move"))
        c = chunks[i]
        if op == "drop" and len(chunks) > 1:
            del chunks[i]
        elif op == "move":
            del chunks[i]
            chunks.insert(rng.randrange(len(chunks) + 1), c)
        else:
            chunks.insert(rng.randrange(len(chunks) + 1), c)
        return png_join(chunks)
    segs = _segments(data)
    if segs:
        s, e, _ = rng.choice(segs)
        j = rng.choice([s2 for s2, _, _ in segs] + [e])
        return data[:j] + data[s:e] + data[j:]
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 512))
    k = rng.randrange(len(data))
    return data[:k] + data[i:j] + data[k:]


def splice(rng, data, name, pool):
    other = pool[rng.choice(sorted(pool))]
    return data[: rng.randrange(1, max(2, len(data)))] + other[rng.randrange(len(other)):]


def _dims(rng, w: int, h: int, bits: int) -> int:
    v = rng.choice([0, 1, 2, 3, 255, 256, 4095, 32767, 32768, 65535, 65536, 1 << 24, (1 << 31) - 1, 1 << 31,
                    (1 << 32) - 1, w + 1, max(0, w - 1), 2 * w, w * h, rng.randrange(1 << 16)])
    return v & ((1 << bits) - 1)


def edit_dimensions(rng, data, name, pool):
    """Rewrite the width and/or height in the header (PNG with a valid CRC, so the edit is believed)."""
    w, h = seed_size(pool[name]) if name in pool else (32, 24)
    which = rng.choice(("w", "h", "both"))
    chunks = png_chunks(data)
    if chunks and chunks[0][0] == b"IHDR" and len(chunks[0][1]) == 13:
        ow, oh = struct.unpack(">II", chunks[0][1][:8])
        nw = _dims(rng, w, h, 32) if which != "h" else ow
        nh = _dims(rng, h, w, 32) if which != "w" else oh
        chunks = [(b"IHDR", struct.pack(">II", nw, nh) + chunks[0][1][8:])] + chunks[1:]
        return png_join(chunks)
    b = bytearray(data)
    segs = _segments(data)
    if segs:
        for s, e, m in segs:
            if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF) and e - s >= 9:
                if which != "w":
                    b[s + 5:s + 7] = struct.pack(">H", _dims(rng, h, w, 16))
                if which != "h":
                    b[s + 7:s + 9] = struct.pack(">H", _dims(rng, w, h, 16))
        return bytes(b)
    if data[:3] == b"GIF" and len(b) > 10:
        b[6:8] = struct.pack("<H", _dims(rng, w, h, 16)) if which != "h" else b[6:8]
        b[8:10] = struct.pack("<H", _dims(rng, h, w, 16)) if which != "w" else b[8:10]
        i = data.find(b"\x2c", 13)
        if i > 0 and i + 9 <= len(b):
            b[i + 5:i + 7] = struct.pack("<H", _dims(rng, w, h, 16))
            b[i + 7:i + 9] = struct.pack("<H", _dims(rng, h, w, 16))
        return bytes(b)
    if data[:2] == b"BM" and len(b) > 26:
        if which != "h":
            b[18:22] = struct.pack("<i", _signed(_dims(rng, w, h, 32)))
        if which != "w":
            b[22:26] = struct.pack("<i", _signed(_dims(rng, h, w, 32)))
        return bytes(b)
    if data[:4] == b"II*\x00" and len(b) > 8:
        ifd = struct.unpack("<I", data[4:8])[0]
        if ifd + 2 <= len(b):
            n = struct.unpack("<H", data[ifd:ifd + 2])[0]
            for k in range(n):
                e = ifd + 2 + 12 * k
                if e + 12 > len(b):
                    break
                tag, typ = struct.unpack("<HH", data[e:e + 4])
                if (tag == 256 and which != "h") or (tag == 257 and which != "w") or (tag == 278 and which == "both"):
                    v = _dims(rng, w, h, 16 if typ == 3 else 32)
                    b[e + 8:e + 12] = struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v)
        return bytes(b)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(b) > 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            b[26:28] = struct.pack("<H", _dims(rng, w, h, 14))
            b[28:30] = struct.pack("<H", _dims(rng, h, w, 14))
        elif kind == b"VP8L":
            v = (_dims(rng, w, h, 14) - 1) & 0x3FFF | ((_dims(rng, h, w, 14) - 1) & 0x3FFF) << 14
            b[21:25] = struct.pack("<I", v | (struct.unpack("<I", data[21:25])[0] & 0xF0000000))
        elif kind == b"VP8X":
            b[24:27] = struct.pack("<I", _dims(rng, w, h, 24))[:3]
            b[27:30] = struct.pack("<I", _dims(rng, h, w, 24))[:3]
        return bytes(b)
    return bit_flips(rng, data, name, pool)


def _signed(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def oversized_metadata(rng, data, name, pool):
    """Text, ICC and EXIF far beyond what any real file carries, plain or as a compressed bomb."""
    chunks = png_chunks(data)
    big = MAX_TEXT_CHUNK + rng.choice((1, 4096, 65536))
    if chunks:
        kind = rng.choice(("zTXt-bomb", "iTXt-bomb", "iCCP-bomb", "tEXt-big", "eXIf-big", "iCCP-garbage",
                           "IDAT-bomb", "many-zTXt"))
        if kind == "zTXt-bomb":
            new = [(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * big, 9))]
        elif kind == "iTXt-bomb":
            new = [(b"iTXt", b"Description\x00\x01\x00\x00\x00" + zlib.compress(b"B" * big, 9))]
        elif kind == "iCCP-bomb":
            new = [(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\0" * (big * 4), 9))]
        elif kind == "tEXt-big":
            new = [(b"tEXt", b"Comment\x00" + b"x" * big)]
        elif kind == "eXIf-big":
            new = [(b"eXIf", b"MM\x00*\x00\x00\x00\x08" + rng.randbytes(rng.choice((64, 4096, big))))]
        elif kind == "iCCP-garbage":
            new = [(b"iCCP", b"icc\x00\x00" + zlib.compress(rng.randbytes(2048)))]
        elif kind == "IDAT-bomb":  # pixel data inflating to 64 MB for an image that needs a few kB
            idat = _zeros_deflated()
            return png_join([c for c in chunks if c[0] != b"IDAT" and c[0] != b"IEND"] + [(b"IDAT", idat), (b"IEND", b"")])
        else:  # many small bombs: each under the per-chunk limit, together past MAX_TEXT_MEMORY's spirit
            new = [(b"zTXt", b"k%d\x00\x00" % i + zlib.compress(b"C" * (MAX_TEXT_CHUNK - 64), 9)) for i in range(80)]
        at = rng.randrange(1, max(2, len(chunks))) if rng.random() < 0.3 else 1  # usually before IDAT: read at open
        return png_join(chunks[:at] + new + chunks[at:])
    segs = _segments(data)
    if segs:
        kind = rng.choice(("exif", "icc", "com", "many-app"))
        if kind == "exif":
            body = b"Exif\x00\x00" + rng.choice((b"II*\x00", b"MM\x00*")) + rng.randbytes(65000)
            seg = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
        elif kind == "icc":
            seg = b"".join(b"\xff\xe2" + struct.pack(">H", 16 + 2 + 60000) + b"ICC_PROFILE\x00" + bytes([k + 1, 3])
                           + rng.randbytes(60000) for k in range(rng.choice((1, 3, 40))))
        elif kind == "com":
            seg = (b"\xff\xfe" + struct.pack(">H", 65535) + b"c" * 65533) * rng.choice((1, 20))
        else:
            seg = b"".join(bytes([0xFF, 0xE0 + rng.randrange(16)]) + struct.pack(">H", 4002) + rng.randbytes(4000)
                           for _ in range(rng.choice((50, 300))))
        return data[:2] + seg + data[2:]
    # other formats: a large junk tail or an oversized chunk in the middle
    i = rng.randrange(len(data))
    return data[:i] + rng.randbytes(rng.choice((4096, 65536))) + data[i:]


@functools.lru_cache(maxsize=1)
def _zeros_deflated() -> bytes:
    return zlib.compress(b"\0" * (64 << 20), 9)


def fixed_crc(rng, data, name, pool):
    """Bit flips inside a PNG with every CRC recomputed, so the damage reaches the decoder."""
    flipped = bit_flips(rng, data, name, pool)
    chunks = png_chunks(flipped)
    if not chunks:
        return flipped
    return png_join(chunks)


MUTATORS = {
    "bit_flips": bit_flips, "byte_run": byte_run, "truncate": truncate, "chunk_duplicate": chunk_duplicate,
    "splice": splice, "edit_dimensions": edit_dimensions, "oversized_metadata": oversized_metadata,
    "fixed_crc": fixed_crc,
}


@dataclass
class Mutant:
    name: str  # file name: unique stem, the seed's extension
    seed: str
    ops: list[str]
    data: bytes


def controls(pool: dict[str, bytes] | None = None) -> list[Mutant]:
    """Every seed unmutated: a round of these alone is the baseline a round of mutants is measured against."""
    pool = seeds() if pool is None else pool
    return [Mutant(f"control_{Path(s).stem}_{Path(s).suffix[1:]}{Path(s).suffix}", s, [], d) for s, d in sorted(pool.items())]


def mutants(n: int, seed: int, pool: dict[str, bytes] | None = None) -> list[Mutant]:
    """``n`` mutants, the same for the same ``seed``; the zTXt bomb and every unmutated seed come first."""
    pool = pool or seeds()
    rng = random.Random(seed)
    out = [Mutant("ztxt_bomb.png", "rgb.png", ["ztxt_bomb"], ztxt_bomb_png())] + controls(pool)
    names = sorted(pool)
    ops = sorted(MUTATORS)
    while len(out) < n:
        s = rng.choice(names)
        data = pool[s]
        chain = [rng.choice(ops) for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3))]
        for op in chain:
            data = MUTATORS[op](rng, data, s, pool) or b"\0"
        stem = f"m{seed}_{len(out):05d}_{'+'.join(chain)}_{Path(s).stem}"
        out.append(Mutant(stem + Path(s).suffix, s, chain, data))
    return out[:n]


# ---------------------------------------------------------------------------------------------
# Running the CLI


def tiny_model(path: Path) -> Path:
    """A small random FCN-8s checkpoint: the fuzz is about decoding, not about the model's speed."""
    import torch

    from fcn_label.model import FCN, FCNConfig
    from fcn_label.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = FCNConfig(arch="fcn8s", num_classes=NUM_CLASSES, width=0.0625, fc_channels=16, padding="same")
    ck = Checkpoint(cfg, FCN(cfg).state_dict(), [f"c{i}" for i in range(NUM_CLASSES)],
                    [(i * 50, 255 - i * 50, i * 20) for i in range(NUM_CLASSES)])
    save_checkpoint(ck, path)
    return path


@dataclass
class Run:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float  # peak resident memory of the process and of the workers it waited for


def run_cli(args: list[str], timeout: float) -> Run:
    """``python -m fcn_label ARGS`` with its peak RSS from wait4 (this process's other children don't count)."""
    cmd = [sys.executable, "-m", "fcn_label", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "COLUMNS": "200"})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Run(cmd, proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                   seconds, usage.ru_maxrss / 1024)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Round:
    tried: int = 0
    predict_decoded: int = 0
    predict_refused: int = 0
    eval_scored: int = 0
    eval_refused: int = 0
    problems: list[str] = field(default_factory=list)  # any broken promise: a crash in the figures
    predict: Run | None = None
    evaluate: Run | None = None
    max_image_seconds: float = 0.0
    controls_ok: bool = True


def _valid_mask(w: int, h: int, k: int) -> bytes:
    a = ((np.arange(h)[:, None] + np.arange(w)[None, :] + k) // 5 % NUM_CLASSES).astype(np.uint8)
    return _save(Image.fromarray(a, mode="L"), "PNG")


def run_round(root: Path, items: list[Mutant], model: Path, timeout: float = 600.0) -> Round:
    """Write ``items``, run one predict and one evaluate over them, check every promise; see :class:`Round`."""
    pool = seeds()
    r = Round(tried=len(items))
    inp, out = root / "in", root / "out"
    inp.mkdir(parents=True)
    for m in items:
        (inp / m.name).write_bytes(m.data)

    # -- predict: every input is a mask or a failures.csv row ------------------------------------
    r.predict = p = run_cli(["predict", str(inp), "--out", str(out), "-w", str(model), "--max-pixels", str(MAX_PIXELS),
                             "--parallel", "workers=1", "--quiet"], timeout)
    if p.returncode not in (0, 1):
        r.problems.append(f"predict exit status {p.returncode}: {p.stderr[-2000:]}")
    if "Traceback" in p.stderr:
        r.problems.append(f"predict printed a traceback: {p.stderr[-2000:]}")
    rows = _rows(out / "predictions.csv")
    fails = _rows(out / "failures.csv")
    done = {Path(x["path"]).name: x for x in rows}
    failed = {Path(x["path"]).name: x["reason"] for x in fails}
    r.predict_decoded, r.predict_refused = len(done), len(failed)
    for m in items:
        if m.name in done:
            x = done[m.name]
            mask = out / x["mask"]
            try:
                with Image.open(mask) as im:
                    ok = im.size == (int(x["width"]), int(x["height"]))
            except Exception as e:  # noqa: BLE001 - a verdict, not a crash
                ok, x["err"] = False, repr(e)
            if not ok:
                r.problems.append(f"{m.name}: predictions.csv row without a matching mask {mask}")
            r.max_image_seconds = max(r.max_image_seconds, float(x["seconds"]))
        elif m.name in failed:
            reason = failed[m.name]
            if m.name not in reason or "\n" in reason:
                r.problems.append(f"{m.name}: failure reason does not name the file on one line: {reason!r}")
            if m.ops == []:
                r.controls_ok = False
                r.problems.append(f"{m.name}: a valid seed was refused: {reason}")
        else:
            r.problems.append(f"{m.name} ({'+'.join(m.ops)} of {m.seed}): neither a mask nor a failures.csv row")
    if len(done) + len(failed) != len(items):
        r.problems.append(f"predict reports {len(done)} done + {len(failed)} failed for {len(items)} inputs")

    # -- evaluate: half the mutants as ground truth, half as predictions --------------------------
    gt, pred, rep = root / "gt", root / "pred", root / "report"
    gt.mkdir()
    pred.mkdir()
    for k, m in enumerate(items):
        w, h = seed_size(pool[m.seed])
        key = Path(m.name).stem
        good = _valid_mask(w, h, k)
        (gt / f"{key}.png").write_bytes(m.data if k % 2 == 0 else good)
        (pred / f"{key}.png").write_bytes(good if k % 2 == 0 else m.data)
    r.evaluate = e = run_cli(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(rep), "--num-classes",
                              str(NUM_CLASSES), "--max-pixels", str(MAX_PIXELS), "--format", "json", "--quiet"], timeout)
    if e.returncode not in (0, 1):
        r.problems.append(f"evaluate exit status {e.returncode}: {e.stderr[-2000:]}")
    if "Traceback" in e.stderr:
        r.problems.append(f"evaluate printed a traceback: {e.stderr[-2000:]}")
    scored = {x["key"] for x in _rows(rep / "per_image.csv")}
    refused = {Path(x["path"]).stem: x["reason"] for x in _rows(rep / "failures.csv")}
    r.eval_scored, r.eval_refused = len(scored), len(refused)
    for k, m in enumerate(items):
        key = Path(m.name).stem
        if key not in scored and key not in refused:
            r.problems.append(f"{m.name}: evaluate has neither a per_image.csv nor a failures.csv row")
        elif key in refused and "\n" in refused[key]:
            r.problems.append(f"{m.name}: evaluate's failure message spans several lines")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=5000, help="mutated files in all (default 5000); each round "
                    "also runs the unmutated seeds as controls")
    ap.add_argument("--per-round", type=int, default=500, help="mutants per predict/evaluate pair (bounds disk use)")
    ap.add_argument("--seed", type=int, default=1, help="random seed: the same seed makes the same mutants")
    ap.add_argument("--keep", type=Path, default=None, help="keep the rounds' folders here (default: deleted)")
    a = ap.parse_args(argv)
    pool = seeds()
    base = Path(tempfile.mkdtemp(prefix="fcn-fuzz-")) if a.keep is None else a.keep
    base.mkdir(parents=True, exist_ok=True)
    model = tiny_model(base / "model.pt")
    total = {"tried": 0, "mutants": 0, "controls": 0, "predict_decoded": 0, "predict_refused": 0, "eval_scored": 0, "eval_refused": 0,
             "crashes": 0, "max_rss_mb": 0.0, "max_image_seconds": 0.0, "seconds": 0.0}
    k, rnd = 0, 0
    ops = {}
    while k < a.mutants:
        n = min(a.per_round, a.mutants - k)
        items = mutants(n + len(pool), seed=a.seed * 100_000 + rnd, pool=pool)  # controls come on top
        total["mutants"] += sum(1 for m in items if m.ops)
        total["controls"] += sum(1 for m in items if not m.ops)
        for m in items:
            for op in m.ops or ["control"]:
                ops[op] = ops.get(op, 0) + 1
        r = run_round(base / f"round{rnd}", items, model)
        total["tried"] += r.tried
        for f in ("predict_decoded", "predict_refused", "eval_scored", "eval_refused"):
            total[f] += getattr(r, f)
        total["crashes"] += len(r.problems)
        total["max_rss_mb"] = max(total["max_rss_mb"], r.predict.max_rss_mb, r.evaluate.max_rss_mb)
        total["max_image_seconds"] = max(total["max_image_seconds"], r.max_image_seconds)
        total["seconds"] += r.predict.seconds + r.evaluate.seconds
        for pr in r.problems[:20]:
            print("PROBLEM:", pr, file=sys.stderr)
        print(json.dumps({"round": rnd, **{f: getattr(r, f) for f in ("tried", "predict_decoded", "predict_refused",
                                                                     "eval_scored", "eval_refused")},
                          "problems": len(r.problems), "predict_s": round(r.predict.seconds, 1),
                          "evaluate_s": round(r.evaluate.seconds, 1), "predict_rss_mb": round(r.predict.max_rss_mb),
                          "evaluate_rss_mb": round(r.evaluate.max_rss_mb)}), flush=True)
        if a.keep is None:
            shutil.rmtree(base / f"round{rnd}", ignore_errors=True)
        k += sum(1 for m in items if m.ops)
        rnd += 1
    total["mutations"] = ops
    print(json.dumps(total, indent=1))
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if total["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
