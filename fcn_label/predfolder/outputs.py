"""Output formats: VOC-style palette PNGs, COCO RLE annotations, overlays, confidence maps."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..classes import voc_palette
from ..images import write_bytes_atomic


# zlib level of the mask and confidence PNGs: level 2 instead of Pillow's default 6 encodes several
# times faster for files a few KB larger (benchmarks/host_profile.py measures both; docs: Performance).
# Pixels are the same either way; changing it changes every mask's bytes.
PNG_COMPRESS_LEVEL = 2


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
    im.save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_mask(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]] | None) -> None:
    write_bytes_atomic(path, encode_png(labels, palette))


def encode_confidence(confidence: np.ndarray) -> bytes:
    """Confidence as 8-bit greyscale PNG (255 = certain) so any viewer shows where the model hesitates."""
    a = np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_confidence(path: Path, confidence: np.ndarray) -> None:
    write_bytes_atomic(path, encode_confidence(confidence))


def encode_overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
                   alpha: float = 0.5) -> bytes:
    """The picture with the mask's colours blended in, as JPEG (the encoders are apart from the writes so an
    object store gets the same bytes a folder does)."""
    pal = np.array(flat_palette(palette), dtype=np.float32).reshape(256, 3)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * pal[labels]
    buf = io.BytesIO()
    Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8), mode="RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
                  alpha: float = 0.5) -> None:
    write_bytes_atomic(path, encode_overlay(image, labels, palette, alpha))


def _class_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal labels in column-major order (COCO's pixel order): starts, ends, values."""
    flat = labels.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    return starts, ends, flat[starts]


def coco_annotations(labels: np.ndarray, confidence: np.ndarray, num_classes: int) -> list[dict]:
    """One annotation per present class: compressed RLE, area, bbox, mean confidence as score.

    ``category_id`` is the class index + 1 (COCO ids start at 1); ``image_id`` and
    ``id`` are filled in when the results file is assembled.

    The label map is cut into runs once for all classes: each class's COCO counts are then the
    gaps and lengths of its own runs, and its confidence sum the float64 sum of its runs' sums.
    One pass instead of a mask, an encode and a masked mean per class; pycocotools still does the compression, so the strings are the ones
    ``mask.encode`` would give (tested against its decoder).
    """
    from pycocotools import mask as mask_utils

    out: list[dict] = []
    if labels.size == 0:
        return out
    h, w = labels.shape
    n = labels.size
    starts, ends, values = _class_runs(labels)
    run_sums = np.add.reduceat(confidence.T.ravel(), starts, dtype=np.float64)
    areas = np.bincount(values, weights=ends - starts, minlength=num_classes)
    sums = np.bincount(values, weights=run_sums, minlength=num_classes)
    for c in np.nonzero(areas)[0]:
        sel = values == c
        s, e = starts[sel], ends[sel]
        # COCO counts alternate background, foreground, ..., starting with background (maybe 0)
        counts = np.empty(2 * len(s) + 1, dtype=np.int64)
        counts[0] = s[0]
        counts[1::2] = e - s
        counts[2:-1:2] = s[1:] - e[:-1]
        counts[-1] = n - e[-1]
        if counts[-1] == 0:
            counts = counts[:-1]
        rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [h, w]}, h, w)
        out.append({
            "category_id": int(c) + 1,
            "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
            "area": float(areas[c]),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
            "score": round(float(sums[c] / areas[c]), 6),
        })
    return out
