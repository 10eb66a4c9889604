"""Output formats: VOC-style palette PNGs, COCO RLE annotations, overlays, confidence maps."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..classes import voc_palette
from ..images import write_bytes_atomic


def flat_palette(palette: Sequence[Sequence[int]] | None) -> list[int]:
    """768 ints for ``Image.putpalette``; unused entries black, 255 (VOC's void) white-ish like VOC."""
    pal = [tuple(c) for c in (palette or [])]
    full = voc_palette(256)
    full[: len(pal)] = pal
    return [v for c in full for v in c]


def encode_png(labels: np.ndarray, palette: Sequence[Sequence[int]] | None) -> bytes:
    """An 8-bit PNG whose pixel values are the class indices ('P' with colours, or 'L' without)."""
    if labels.dtype != np.uint8:
        if labels.max(initial=0) > 255:
            raise ValueError("more than 256 classes cannot be stored in an 8-bit PNG")
        labels = labels.astype(np.uint8)
    if palette is None:
        im = Image.fromarray(labels, mode="L")
    else:
        im = Image.fromarray(labels, mode="P")
        im.putpalette(flat_palette(palette))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_mask(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]] | None) -> None:
    write_bytes_atomic(path, encode_png(labels, palette))


def write_confidence(path: Path, confidence: np.ndarray) -> None:
    """Confidence as 8-bit greyscale (255 = certain) so any viewer shows where the model hesitates."""
    a = np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
                  alpha: float = 0.5) -> None:
    pal = np.array(flat_palette(palette), dtype=np.float32).reshape(256, 3)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * pal[labels]
    buf = io.BytesIO()
    Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8), mode="RGB").save(buf, format="JPEG", quality=90)
    write_bytes_atomic(path, buf.getvalue())


def coco_annotations(labels: np.ndarray, confidence: np.ndarray, num_classes: int) -> list[dict]:
    """One annotation per present class: compressed RLE, area, bbox, mean confidence as score.

    ``category_id`` is the class index + 1 (COCO ids start at 1); ``image_id`` and
    ``id`` are filled in when the results file is assembled.
    """
    from pycocotools import mask as mask_utils

    out = []
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    present = np.nonzero(counts)[0]
    if len(present) == 0:
        return out
    # pycocotools wants column-major uint8: transpose the labels once, not one mask copy per class
    # (a bool array compared from a Fortran-ordered one is Fortran-ordered; bool and uint8 share bytes)
    labels_f = np.asfortranarray(labels)
    for c in present:
        m = labels_f == c
        rle = mask_utils.encode(m.view(np.uint8))
        area = float(mask_utils.area(rle))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({
            "category_id": int(c) + 1,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]},
            "area": area,
            "bbox": bbox,
            "iscrowd": 0,
            "score": round(float(confidence[m].mean()), 6),
        })
    return out
