"""evaluate's reports: CSV tables (pandas), the confusion matrix and worst images as PNG, all written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..classes import default_palette, voc_palette
from ..guard import guarded, write_failures_csv
from ..images import atomic_path, read_image, write_csv_atomic
from .score import EvalResult, WorstImage

IGNORE_COLOUR = (224, 224, 192)  # VOC's void colour, used for ignored ground truth in pictures


def _png_atomic(im, path: Path) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def write_report(result: EvalResult, out: str | Path, palette: Sequence[Sequence[int]] | None = None) -> list[Path]:
    """summary/per_class/per_image/confusion_matrix/failures CSVs and two PNGs, each written atomically."""
    out = Path(out)
    palette = palette or default_palette(result.class_names)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df, index in (("summary.csv", result.summary_frame(), False),
                            ("per_class.csv", result.per_class_frame(), False),
                            ("per_image.csv", result.per_image, False),
                            ("confusion_matrix.csv", result.confusion_frame(), True)):
        write_csv_atomic(df, out / name, index, float_format="%.6f")
        written.append(out / name)
    write_failures_csv(out / "failures.csv", result.failure_rows())
    written.append(out / "failures.csv")
    _png_atomic(render_confusion(result.conf, result.class_names), out / "confusion_matrix.png")
    written.append(out / "confusion_matrix.png")
    worst = out / "worst_images.png"
    if result.worst:
        _png_atomic(render_worst(result.worst, palette, result.ignore_index, len(result.class_names)), worst)
        written.append(worst)
    else:
        worst.unlink(missing_ok=True)  # a picture from an earlier run would no longer describe this report
    return written


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_w(draw, text: str, font) -> int:
    b = draw.textbbox((0, 0), text, font=font)
    return b[2] - b[0]


def render_confusion(conf: np.ndarray, class_names: Sequence[str]):
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a PIL image."""
    from PIL import Image, ImageDraw

    n = conf.shape[0]
    rows = conf.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, conf / np.maximum(rows, 1), np.nan)
    cell = int(np.clip(560 // max(n, 1), 6, 44))
    font = _font(max(9, min(14, cell - 4)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_w(probe, s, font) for s in class_names) + 10
    top, left = label_w + 28, label_w + 28
    W, H = left + n * cell + 12, top + n * cell + 12
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((8, 6), "confusion matrix: rows = ground truth, columns = prediction, normalised per row",
           fill="black", font=_font(12))
    lo, hi = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    for i in range(n):
        d.text((left - 6 - _text_w(d, class_names[i], font), top + i * cell + (cell - 12) // 2), class_names[i],
               fill="black", font=font)
        # column labels: drawn on a strip, rotated to read bottom-up
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((label_w - 4 - _text_w(d, class_names[i], font), (cell - 12) // 2),
                                   class_names[i], fill="black", font=font)
        im.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w - 4))
        for j in range(n):
            v = norm[i, j]
            x0, y0 = left + j * cell, top + i * cell
            colour = (240, 240, 240) if np.isnan(v) else tuple(int(c) for c in lo + (hi - lo) * v)
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            if cell >= 26 and not np.isnan(v) and v >= 0.005:
                t = f"{100 * v:.0f}"
                d.text((x0 + (cell - _text_w(d, t, font)) // 2, y0 + (cell - 12) // 2), t,
                       fill="white" if v > 0.5 else "black", font=font)
    return im


def colourise(mask: np.ndarray, palette: Sequence[Sequence[int]] | None, ignore_index: int | None,
              num_classes: int) -> np.ndarray:
    lut = np.array(voc_palette(256), dtype=np.uint8)
    if palette:
        lut[: len(palette)] = np.array(palette, dtype=np.uint8)[:256]
    lut[num_classes:] = IGNORE_COLOUR
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = IGNORE_COLOUR
    return lut[mask]


def render_worst(worst: Sequence[WorstImage], palette, ignore_index: int | None, num_classes: int,
                 cell: tuple[int, int] = (240, 180)):
    """Rows of image | ground truth | prediction for the lowest-scoring images."""
    from PIL import Image, ImageDraw

    cw, ch = cell
    pad, head = 6, 18
    W = 3 * cw + 4 * pad
    H = head + len(worst) * (ch + head + pad) + pad
    im = Image.new("RGB", (W, H), (40, 40, 40))
    d = ImageDraw.Draw(im)
    font = _font(12)
    for c, t in enumerate(("image", "ground truth", "prediction")):
        d.text((pad + c * (cw + pad), 3), t, fill="white", font=font)
    for r, w in enumerate(worst):
        y = head + r * (ch + head + pad)
        d.text((pad, y + 2), f"{w.key}   mean IoU {w.mean_iou:.3f}   pixel acc {w.pixel_accuracy:.3f}",
               fill=(255, 220, 120), font=font)
        y += head
        panels = [None, colourise(w.gt, palette, ignore_index, num_classes),
                  colourise(w.pred, palette, None, num_classes)]
        if w.image is not None:
            panels[0], _ = guarded(w.image, read_image, w.image)  # no picture is no reason to lose the report
        for c, arr in enumerate(panels):
            x = pad + c * (cw + pad)
            if arr is None:
                d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(90, 90, 90))
                d.text((x + 8, y + ch // 2 - 6), "no image", fill="white", font=font)
                continue
            p = Image.fromarray(arr)
            p.thumbnail((cw, ch), Image.Resampling.NEAREST if c else Image.Resampling.BILINEAR)
            im.paste(p, (x + (cw - p.width) // 2, y + (ch - p.height) // 2))
    return im
