"""CVAT "Segmentation mask 1.1": a VOC-style folder (and zip) that CVAT imports as masks.

Layout, as CVAT writes it and its importer (datumaro's VOC reader) expects::

    labelmap.txt                      # label:color_rgb:parts:actions, one label per line
    ImageSets/Segmentation/default.txt
    SegmentationClass/<rel>.png       # RGB, each pixel in its class's labelmap colour
    SegmentationObject/<rel>.png      # instance masks: one instance per class present

The labelmap lists the model's classes in class-index order with the masks'
palette colours, so a colour mask reads back to exactly predict's index mask
(colours are checked to be distinct). A folder is the resumable work; the zip
is rebuilt from it at the end.
"""

from __future__ import annotations

import io as _io
import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import atomic_path, write_bytes_atomic, write_text_atomic
from .common import MANIFEST, ExportResult, OutGuard, ExportSource, PredItem, check_manifest, run_items

SUBSET = "default"


def labelmap_text(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    for n in classes:
        if ":" in n or "\n" in n:
            raise InputError(f"class name {n!r} contains ':' which labelmap.txt cannot hold; rename the class")
    cols = [tuple(int(v) for v in palette[i]) for i in range(len(classes))]
    if len(set(cols)) != len(cols):
        dup = [classes[i] for i, c in enumerate(cols) if cols.count(c) > 1]
        raise InputError(f"classes {', '.join(dup)} share a colour; CVAT colour masks need one colour per class "
                         "(re-run predict with --palette voc)")
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(classes, cols)]
    return "\n".join(lines) + "\n"


def _png(arr: np.ndarray, mode: str, palette: list[int] | None = None) -> bytes:
    im = Image.fromarray(arr, mode=mode)
    if palette is not None:
        im.putpalette(palette)
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _instance_palette() -> list[int]:
    from ..classes import voc_palette

    return [v for c in voc_palette(256) for v in c]


def export_cvat(folder: ExportSource, out: str | os.PathLike, items: Sequence[PredItem] | None = None,
                overwrite: bool = False, zip_name: str | None = "cvat.zip", on_progress=None) -> ExportResult:
    """Write the CVAT folder under ``out`` (and ``out/<zip_name>``); one failure line per bad image."""
    out = Path(out)
    items = list(folder.items if items is None else items)
    check_manifest(out, "cvat", overwrite)
    guard = OutGuard(out)
    n = len(folder.classes)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:n] = np.array([tuple(folder.palette[i]) for i in range(n)], dtype=np.uint8)
    labelmap = labelmap_text(folder.classes, folder.palette)
    ipal = _instance_palette()
    res = ExportResult()

    def cls_path(it: PredItem) -> Path:
        return guard(f"SegmentationClass/{it.rel}.png")

    def work(it: PredItem) -> None:
        labels = folder.labels(it)
        present = np.nonzero(np.bincount(labels.ravel(), minlength=n))[0]
        inst = np.zeros(256, dtype=np.uint8)
        inst[present] = np.arange(1, len(present) + 1, dtype=np.uint8)
        write_bytes_atomic(guard(f"SegmentationObject/{it.rel}.png"), _png(inst[labels], "P", ipal))
        write_bytes_atomic(cls_path(it), _png(lut[labels], "RGB"))  # last: its presence means done

    run_items(items, lambda it: (out / f"SegmentationClass/{it.rel}.png").is_file(), work, overwrite, res, on_progress)
    # everything exported so far into this folder (earlier --only runs included), in predict's order
    ok = [it for it in folder.items if (out / f"SegmentationClass/{it.rel}.png").is_file()
          and (out / f"SegmentationObject/{it.rel}.png").is_file()]
    write_text_atomic(guard("labelmap.txt"), labelmap)
    write_text_atomic(guard(f"ImageSets/Segmentation/{SUBSET}.txt"), "".join(f"{it.rel}\n" for it in ok))
    write_text_atomic(guard(MANIFEST), json.dumps({"format": "cvat", "source": str(folder.root), "model": folder.model,
                                                   "classes": folder.classes, "images": [it.rel for it in ok]}, indent=1))
    res.files = [out / "labelmap.txt"]
    if zip_name:
        zpath = guard(zip_name)
        with atomic_path(zpath) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
                z.write(out / "labelmap.txt", "labelmap.txt")
                z.write(out / MANIFEST, MANIFEST)  # marks the labelmap as ours (see datasets.cvat)
                z.write(out / f"ImageSets/Segmentation/{SUBSET}.txt", f"ImageSets/Segmentation/{SUBSET}.txt")
                for it in ok:
                    for sub in ("SegmentationClass", "SegmentationObject"):
                        z.write(out / f"{sub}/{it.rel}.png", f"{sub}/{it.rel}.png")
        res.files.append(zpath)
    return res
