"""LabelMe: one JSON per image with one polygon per connected region and class.

Holes are handled by painting order, the way LabelMe itself rasterises shapes
(later shapes paint over earlier ones): each region is traced by its outer
boundary only, and shapes are written largest filled area first, so a region
lying in another's hole comes later and paints over it. Boundaries run through
pixel centres (OpenCV's border following) and are simplified with
Douglas-Peucker: no vertex of the original boundary is more than ``tolerance``
pixels from the polygon; 0 keeps every boundary pixel. By default the tolerance
is chosen per image (:func:`fitted_shapes`): the largest of :data:`AUTO_TOLERANCES`
whose polygons, rasterised as LabelMe does, keep :data:`KEEP` of the image's
pixels; one fixed tolerance loses more on small or busy images. ``imagePath`` is
relative to the JSON file, ``imageData`` is null (LabelMe loads the photo from
the path). ``labels.txt`` lists the classes in class-index order, for
``labelme --labels labels.txt`` and for reading back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..images import write_text_atomic
from ..datasets.corrections import extra_module
from ..datasets.labelme import rasterise
from .common import MANIFEST, ExportResult, OutGuard, ExportSource, PredItem, check_manifest, run_items

LABELME_VERSION = "5.5.0"
LABELS_FILE = "labels.txt"


def _cv2():
    return extra_module("cv2", "labelme export (region boundaries traced with OpenCV)")


# the share of an image's pixels its polygons must keep when the tolerance is chosen per image, and the
# tolerances tried, largest (fewest vertices) first; 0 (every boundary pixel) is the last resort
KEEP = 0.995
AUTO_TOLERANCES = (1.0, 0.5, 0.25, 0.0)


def unlabelled(num_classes: int) -> int:
    """The label-map value of a pixel no shape covers (255, or the class count when 255 is a class)."""
    return max(255, num_classes)


@dataclass(frozen=True)
class FittedShapes:
    """One image's polygons, the tolerance they were simplified with and the share of pixels they keep."""

    shapes: list[dict]
    tolerance: float
    kept: float


def _traced(labels: np.ndarray, classes: Sequence[str]) -> list[tuple[float, int, np.ndarray]]:
    """``(area, class, outer boundary)`` per connected region, largest first (stable: class order on ties).

    Values outside ``classes`` (an ignore or "no label" value) get no region."""
    cv2 = _cv2()
    regions: list[tuple[float, int, np.ndarray]] = []
    for c in np.nonzero(np.bincount(labels.ravel(), minlength=len(classes)))[0]:
        if c >= len(classes):
            continue
        m = (labels == c).astype(np.uint8)
        contours, hier = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hier is None:
            continue
        for cnt, h in zip(contours, hier[0]):
            if h[3] != -1:  # a hole: filled by the shapes of the regions inside it
                continue
            area = cv2.contourArea(cnt) + len(cnt)  # + perimeter: 1-pixel-wide regions still rank by size
            regions.append((area, int(c), cnt))
    regions.sort(key=lambda r: -r[0])
    return regions


def _polygons(regions: list[tuple[float, int, np.ndarray]], classes: Sequence[str], tolerance: float) -> list[dict]:
    cv2 = _cv2()
    shapes = []
    for _, c, cnt in regions:
        if tolerance > 0 and len(cnt) > 3:
            cnt = cv2.approxPolyDP(cnt, tolerance, True)
        pts = [[float(x), float(y)] for x, y in cnt.reshape(-1, 2)]
        while len(pts) < 3:  # one pixel or a straight line: LabelMe needs 3 points
            pts.append(list(pts[-1] if len(pts) == 1 else pts[0]))
        shapes.append({"label": classes[c], "points": pts, "group_id": None, "description": "",
                       "shape_type": "polygon", "flags": {}, "mask": None})
    return shapes


def mask_to_shapes(labels: np.ndarray, classes: Sequence[str], tolerance: float = 1.0) -> list[dict]:
    """LabelMe polygon shapes that, painted in order, reproduce ``labels``."""
    return _polygons(_traced(labels, classes), classes, tolerance)


def kept_share(labels: np.ndarray, shapes: Sequence[dict], classes: Sequence[str]) -> float:
    """The share of ``labels``' pixels whose class LabelMe's drawing of ``shapes`` reproduces (drawn by the
    corrections reader, :func:`fcn_label.datasets.labelme.rasterise`: fill and outline, later over earlier)."""
    if labels.size == 0:
        return 1.0
    index: dict[str, int] = {}
    for i, name in enumerate(classes):
        index.setdefault(name, i)
    got = rasterise(list(shapes), *labels.shape[:2], index, unlabelled(len(classes)), "labelme export")
    return float(np.count_nonzero(got == labels)) / labels.size


def fitted_shapes(labels: np.ndarray, classes: Sequence[str], tolerance: float | None = None,
                  keep: float = KEEP) -> FittedShapes:
    """Polygons for ``labels``: at ``tolerance`` when given; otherwise at the largest of
    :data:`AUTO_TOLERANCES` that keeps ``keep`` of the pixels (0, every boundary pixel, when none does)."""
    regions = _traced(labels, classes)
    tried = AUTO_TOLERANCES if tolerance is None else (tolerance,)
    for i, tol in enumerate(tried):
        shapes = _polygons(regions, classes, tol)
        kept = kept_share(labels, shapes, classes)
        if kept >= keep or i == len(tried) - 1:
            return FittedShapes(shapes, tol, kept)
    raise AssertionError("unreachable: the last tolerance tried is returned")


def export_labelme(folder: ExportSource, out: str | os.PathLike, items: Sequence[PredItem] | None = None,
                   images: Path | None = None, overwrite: bool = False, tolerance: float | None = None,
                   on_progress=None, keep: float = KEEP) -> ExportResult:
    """``tolerance`` None: chosen per image (:func:`fitted_shapes`), recorded per image in the manifest;
    a number: that tolerance for every image. ``res.summary`` names the lowest share of pixels kept."""
    out = Path(out)
    _cv2()
    items = list(folder.items if items is None else items)
    check_manifest(out, "labelme", overwrite)
    guard = OutGuard(out)
    res = ExportResult()
    # per image: the tolerance and the share kept; an earlier run's entries are kept for the images it wrote
    fitted: dict[str, dict] = _previous_fits(out / MANIFEST) if tolerance is None else {}

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
        fit = fitted_shapes(labels, folder.classes, tolerance, keep)
        doc = {"version": LABELME_VERSION, "flags": {}, "shapes": fit.shapes,
               "imagePath": Path(rel_img).as_posix(), "imageData": None,
               "imageHeight": int(labels.shape[0]), "imageWidth": int(labels.shape[1])}
        write_text_atomic(target, json.dumps(doc, indent=1))
        fitted[it.rel] = {"tolerance": fit.tolerance, "kept": round(fit.kept, 6)}

    run_items(items, lambda it: (out / f"{it.rel}.json").is_file(), work, overwrite, res, on_progress)
    write_text_atomic(guard(LABELS_FILE), "".join(f"{c}\n" for c in folder.classes))
    manifest = {"format": "labelme", "source": str(folder.root), "model": folder.model, "classes": folder.classes,
                "tolerance": tolerance}
    if tolerance is None:  # a fixed tolerance keeps the manifest as it was
        manifest.update(tolerance="auto", keep=keep, images=fitted)
    write_text_atomic(guard(MANIFEST), json.dumps(manifest, indent=1))
    res.summary = _summary(fitted, tolerance, keep)
    return res


def _previous_fits(manifest: Path) -> dict[str, dict]:
    try:
        d = json.loads(manifest.read_text(encoding="utf-8")).get("images")
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in d.items() if isinstance(v, dict)} if isinstance(d, dict) else {}


def _summary(fitted: dict[str, dict], tolerance: float | None, keep: float) -> str | None:
    """One line on the lowest share of pixels an image's polygons keep (auto mode: over every image of --out)."""
    kept = {k: v["kept"] for k, v in fitted.items() if isinstance(v.get("kept"), (int, float))}
    if not kept:
        return None
    worst = min(kept, key=lambda k: (kept[k], k))
    low = f"lowest {100 * kept[worst]:.2f} % ({worst})"
    if tolerance is not None:
        return f"labelme: tolerance {tolerance:g} px; {low}"
    if kept[worst] >= keep:
        return f"labelme: every image keeps ≥ {100 * keep:g} % of its pixels; {low}"
    n = sum(v < keep for v in kept.values())
    return (f"labelme: {n} image(s) keep less than {100 * keep:g} % of their pixels even with exact boundaries; "
            f"{low}")
