"""Label Studio: a BrushLabels labelling config and tasks with brush-RLE pre-annotations.

Each task carries one prediction (``model_version``, ``score`` = the image's mean
confidence, so Label Studio can sort tasks by it) with one brush region per
class present, encoded by label-studio-sdk's own brush RLE encoder. The task
data also keeps ``fcn_label_key`` (the mask's relative name) and
``fcn_label_classes`` (the class names in index order) so that a Label Studio
JSON export of the corrected tasks reads back with the right keys and classes.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import InputError
from ..images import write_text_atomic
from ..datasets.corrections import extra_module
from .common import MANIFEST, ExportResult, OutGuard, ExportSource, PredItem, check_manifest, run_items

FROM_NAME, TO_NAME = "label", "image"
TASKS_FILE, CONFIG_FILE = "tasks.json", "config.xml"
DEFAULT_URL_PREFIX = "/data/local-files/?d="


def brush():
    return extra_module("label_studio_sdk.converter.brush", "labelstudio export (brush RLE encoded by label-studio-sdk)")


def labelling_config(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    rows = "\n".join(f"    <Label value={quoteattr(n)} background=\"#{c[0]:02x}{c[1]:02x}{c[2]:02x}\"/>"
                     for n, c in zip(classes, palette))
    return (f"<View>\n  <Image name=\"{TO_NAME}\" value=\"${TO_NAME}\" zoom=\"true\"/>\n"
            f"  <BrushLabels name=\"{FROM_NAME}\" toName=\"{TO_NAME}\">\n{rows}\n  </BrushLabels>\n</View>\n")


def mask_regions(labels: np.ndarray, classes: Sequence[str], key: str) -> list[dict]:
    """One brushlabels result per class present, RLE from the SDK's encoder (255 = painted)."""
    b = brush()
    h, w = labels.shape
    out = []
    for c in np.nonzero(np.bincount(labels.ravel(), minlength=len(classes)))[0]:
        rle = b.mask2rle(((labels == c) * 255).astype(np.uint8))
        out.append({"id": f"{key}-{c}"[-64:].replace("/", "_"), "from_name": FROM_NAME, "to_name": TO_NAME,
                    "type": "brushlabels", "origin": "prediction", "original_width": int(w),
                    "original_height": int(h), "image_rotation": 0,
                    "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [classes[c]]}})
    return out


def export_labelstudio(folder: ExportSource, out: str | os.PathLike, items: Sequence[PredItem] | None = None,
                       images: Path | None = None, overwrite: bool = False, url_prefix: str = DEFAULT_URL_PREFIX,
                       on_progress=None) -> ExportResult:
    """``config.xml`` and ``tasks.json`` under ``out``; one task file per image under ``tasks/`` makes it resumable.

    ``data.image`` is ``url_prefix`` + the photo's path relative to ``--images``
    (or the recorded input path), URL-quoted: with Label Studio's local file
    serving (LOCAL_FILES_SERVING_ENABLED, LOCAL_FILES_DOCUMENT_ROOT = that root)
    the default prefix shows the photos as they are.
    """
    out = Path(out)
    brush()
    items = list(folder.items if items is None else items)
    check_manifest(out, "labelstudio", overwrite)
    guard = OutGuard(out)
    res = ExportResult()
    model = folder.model or "fcn-label"

    def task_path(it: PredItem) -> Path:
        return out / "tasks" / f"{it.rel}.json"

    def work(it: PredItem) -> None:
        labels = folder.labels(it)
        try:
            img = folder.find_image(it, images)
            ref = img.relative_to(images).as_posix() if images is not None else img.as_posix().lstrip("/")
        except (InputError, ValueError):
            if images is not None:
                raise
            ref = (it.source or f"{it.rel}.png").lstrip("/")
            res.notes.append(f"{it.mask}: photo {it.source or it.rel} not found; data.image points where predict "
                             "read it (pass --images ROOT if it moved)")
        task = {"data": {TO_NAME: url_prefix + urllib.parse.quote(ref, safe="/"), "fcn_label_key": it.rel,
                         "fcn_label_classes": list(folder.classes)},
                "predictions": [{"model_version": model, "score": it.mean_confidence,
                                 "result": mask_regions(labels, folder.classes, it.rel)}]}
        write_text_atomic(guard(f"tasks/{it.rel}.json"), json.dumps(task))

    run_items(items, lambda it: task_path(it).is_file(), work, overwrite, res, on_progress)
    tasks = []  # everything exported so far into this folder (earlier --only runs included)
    for it in folder.items:
        p = task_path(it)
        if p.is_file():
            tasks.append(json.loads(p.read_text(encoding="utf-8")))
    write_text_atomic(guard(CONFIG_FILE), labelling_config(folder.classes, folder.palette))
    write_text_atomic(guard(TASKS_FILE), json.dumps(tasks))
    write_text_atomic(guard(MANIFEST), json.dumps({"format": "labelstudio", "source": str(folder.root),
                                                   "model": model, "classes": folder.classes}, indent=1))
    res.files = [out / CONFIG_FILE, out / TASKS_FILE]
    return res
