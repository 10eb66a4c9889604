"""LabelMe: one JSON per image with one polygon per connected region and class.

Holes are handled by painting order, the way LabelMe itself rasterises shapes
(later shapes paint over earlier ones): each region is traced by its outer
boundary only, and shapes are written largest filled area first, so a region
lying in another's hole comes later and paints over it. Boundaries run through
pixel centres (OpenCV's border following) and are simplified with
Douglas-Peucker at ``tolerance`` pixels (default 1.0: no vertex of the original
boundary is more than one pixel from the polygon; 0 keeps every boundary
pixel). ``imagePath`` is relative to the JSON file, ``imageData`` is null
(LabelMe loads the photo from the path). ``labels.txt`` lists the classes in
class-index order, for ``labelme --labels labels.txt`` and for reading back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..images import write_text_atomic
from ..datasets.corrections import extra_module
from .common import MANIFEST, ExportResult, OutGuard, ExportSource, PredItem, check_manifest, run_items

LABELME_VERSION = "5.5.0"
LABELS_FILE = "labels.txt"


def _cv2():
    return extra_module("cv2", "labelme export (region boundaries traced with OpenCV)")


def mask_to_shapes(labels: np.ndarray, classes: Sequence[str], tolerance: float = 1.0) -> list[dict]:
    """LabelMe polygon shapes that, painted in order, reproduce ``labels``."""
    cv2 = _cv2()
    shapes: list[tuple[float, dict]] = []
    for c in np.nonzero(np.bincount(labels.ravel(), minlength=len(classes)))[0]:
        m = (labels == c).astype(np.uint8)
        contours, hier = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hier is None:
            continue
        for cnt, h in zip(contours, hier[0]):
            if h[3] != -1:  # a hole: filled by the shapes of the regions inside it
                continue
            area = cv2.contourArea(cnt) + len(cnt)  # + perimeter: 1-pixel-wide regions still rank by size
            if tolerance > 0 and len(cnt) > 3:
                cnt = cv2.approxPolyDP(cnt, tolerance, True)
            pts = [[float(x), float(y)] for x, y in cnt.reshape(-1, 2)]
            while len(pts) < 3:  # one pixel or a straight line: LabelMe needs 3 points
                pts.append(list(pts[-1] if len(pts) == 1 else pts[0]))
            shapes.append((area, {"label": classes[c], "points": pts, "group_id": None, "description": "",
                                  "shape_type": "polygon", "flags": {}, "mask": None}))
    shapes.sort(key=lambda s: -s[0])  # stable: equal areas keep class order
    return [s for _, s in shapes]


def export_labelme(folder: ExportSource, out: str | os.PathLike, items: Sequence[PredItem] | None = None,
                   images: Path | None = None, overwrite: bool = False, tolerance: float = 1.0,
                   on_progress=None) -> ExportResult:
    out = Path(out)
    _cv2()
    items = list(folder.items if items is None else items)
    check_manifest(out, "labelme", overwrite)
    guard = OutGuard(out)
    res = ExportResult()

    def work(it: PredItem) -> None:
        labels = folder.labels(it)
        target = guard(f"{it.rel}.json")
        try:
            img = folder.find_image(it, images)
        except InputError:
            if images is not None:
                raise
            img = Path(it.source or f"{it.rel}.png")  # recorded input, even if moved since: LabelMe asks
            res.notes.append(f"{it.mask}: photo {img} not found; imagePath points where predict read it "
                             "(pass --images ROOT if it moved)")
        rel_img = os.path.relpath(os.path.abspath(img), os.path.abspath(target.parent))
        doc = {"version": LABELME_VERSION, "flags": {}, "shapes": mask_to_shapes(labels, folder.classes, tolerance),
               "imagePath": Path(rel_img).as_posix(), "imageData": None,
               "imageHeight": int(labels.shape[0]), "imageWidth": int(labels.shape[1])}
        write_text_atomic(target, json.dumps(doc, indent=1))

    run_items(items, lambda it: (out / f"{it.rel}.json").is_file(), work, overwrite, res, on_progress)
    write_text_atomic(guard(LABELS_FILE), "".join(f"{c}\n" for c in folder.classes))
    write_text_atomic(guard(MANIFEST), json.dumps({"format": "labelme", "source": str(folder.root),
                                                   "model": folder.model, "classes": folder.classes,
                                                   "tolerance": tolerance}, indent=1))
    return res
