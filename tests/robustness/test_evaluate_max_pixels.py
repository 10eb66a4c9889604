"""evaluate --max-pixels: a mask whose header claims many pixels is refused from the header, not decoded.

The fuzzer found evaluate decoding a 64 MB deflate bomb in full (peak 1.46 GB) because it had
no limit but Pillow's 250 Mpx default.
"""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from support import fuzz


def _bomb_mask(w: int, h: int) -> bytes:
    """A valid greyscale PNG of w x h zeros: a few kB of deflate for w*h bytes of pixels."""
    raw = zlib.compress(b"\0" * ((w + 1) * h), 9)  # filter byte 0 per row, then zeros
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return fuzz.PNG_SIG + fuzz.png_chunk(b"IHDR", ihdr) + fuzz.png_chunk(b"IDAT", raw) + fuzz.png_chunk(b"IEND", b"")


def test_masks_over_max_pixels_are_one_failure_row_each(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    small = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32) % 3
    for d in (gt, pred):
        Image.fromarray(small, mode="L").save(d / "ok.png")
    (gt / "big.png").write_bytes(_bomb_mask(4000, 3000))  # 12 Mpx of zeros in ~12 kB
    with Image.open(gt / "big.png") as im:  # Pillow itself reads it as a genuine 4000x3000 image
        assert im.size == (4000, 3000)
    (pred / "big.png").write_bytes(_bomb_mask(4000, 3000))
    p = subprocess.run([sys.executable, "-m", "fcn_label", "evaluate", "--gt", str(gt), "--pred", str(pred),
                        "--num-classes", "3", "--max-pixels", "1000000", "--out", str(tmp_path / "r"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    rows = list(csv.DictReader(open(tmp_path / "r" / "failures.csv", encoding="utf-8")))
    assert [Path(r["path"]).stem for r in rows] == ["big"] and rows[0]["stage"] == "evaluate"
    assert "4000x3000 pixels exceeds the limit of 1,000,000 pixels" in rows[0]["reason"]
    scored = list(csv.DictReader(open(tmp_path / "r" / "per_image.csv", encoding="utf-8")))
    assert [r["key"] for r in scored] == ["ok"] and float(scored[0]["pixel_accuracy"]) == 1.0
