"""Read a folder of LabelMe JSON files as class-index masks.

Shapes are painted in file order, later over earlier, as LabelMe rasterises
them (polygon, rectangle, circle, line, linestrip, point; filled shapes include
their outline). Unpainted pixels get the ignore label: nobody labelled them.
Classes come from ``labels.txt`` beside the files (LabelMe's ``--labels`` file;
``__ignore__`` and blank lines skipped), else the labels found, sorted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from ..guard import guarded
from .corrections import Corrections, Entry, layout_functions, read_json

NAME = "labelme"
LABELS_FILE = "labels.txt"


def _labelme_jsons(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))


def detect(path: Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    import itertools

    jsons = (p for p in path.rglob("*.json") if not p.name.startswith("."))
    for p in itertools.islice(jsons, 5):
        try:
            doc = json.loads(p.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "shapes" in doc and ("imagePath" in doc or "imageHeight" in doc):
            return True
    return False


def _check(doc, p: Path) -> tuple[int, int, list]:
    if not isinstance(doc, dict):
        raise InputError(f"{p}: expected a LabelMe JSON object; re-save it in LabelMe")
    for f in ("imageHeight", "imageWidth"):
        if not isinstance(doc.get(f), int) or doc[f] <= 0:
            raise InputError(f"{p}: field {f!r} missing or not a positive integer; re-save it in LabelMe")
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise InputError(f"{p}: field 'shapes' missing or not a list; re-save it in LabelMe")
    for i, s in enumerate(shapes):
        if not isinstance(s, dict) or not isinstance(s.get("label"), str):
            raise InputError(f"{p}: field 'shapes[{i}].label' missing or not a string; fix the label")
        pts = s.get("points")
        if not isinstance(pts, list) or not pts or not all(
                isinstance(q, (list, tuple)) and len(q) == 2 and all(isinstance(v, (int, float)) for v in q) for q in pts):
            raise InputError(f"{p}: field 'shapes[{i}].points' must be a list of [x, y] numbers; fix the shape")
    return doc["imageHeight"], doc["imageWidth"], shapes


def rasterise(shapes: list, h: int, w: int, index: dict[str, int], ignore_index: int, where: str) -> np.ndarray:
    im = Image.new("L", (w, h), ignore_index)
    d = ImageDraw.Draw(im)
    for i, s in enumerate(shapes):
        c = index.get(s["label"])
        if c is None:
            raise InputError(f"{where}: field 'shapes[{i}].label' {s['label']!r} is not a class "
                             f"({', '.join(index)}); fix the label or add it to {LABELS_FILE}")
        pts = [tuple(map(float, q)) for q in s["points"]]
        kind = s.get("shape_type") or "polygon"
        if kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=c, outline=c)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c, outline=c)
        elif kind in ("line", "linestrip"):
            d.line(pts, fill=c, width=1)
        elif kind == "point":
            d.point(pts, fill=c)
        elif kind == "polygon":
            if len(pts) >= 2:
                d.polygon(pts, fill=c, outline=c)
            else:
                d.point(pts, fill=c)
        else:
            raise InputError(f"{where}: field 'shapes[{i}].shape_type' {kind!r} is not supported; "
                             "use polygon, rectangle, circle, line, linestrip or point")
    return np.asarray(im, dtype=np.uint8).copy()


def read(path: str | Path, ignore_index: int = 255) -> Corrections:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; give the folder of LabelMe .json files")
    docs, problems = {}, []
    for p in _labelme_jsons(path):  # one boundary per file: any surprise is one line, the rest goes on
        doc, err = guarded(p, lambda p=p: read_json(p, "LabelMe"))
        checked, err = (None, err) if err else guarded(p, _check, doc, p)
        if err:
            problems.append(err)
        else:
            docs[p] = (doc, *checked)
    lf = path / LABELS_FILE
    if lf.is_file():
        names = [s.strip() for s in lf.read_text(encoding="utf-8", errors="replace").splitlines()
                 if s.strip() and s.strip() != "__ignore__"]
    else:
        names = sorted({s["label"] for d in docs.values() for s in d[3]})
    index = {n: i for i, n in enumerate(names)}
    entries = {}
    for p, (doc, h, w, shapes) in docs.items():
        key = p.relative_to(path).with_suffix("").as_posix()
        ref = doc.get("imagePath") if isinstance(doc.get("imagePath"), str) else ""
        img = (p.parent / ref) if ref else None
        entries[key] = Entry(key, img if img is not None and img.is_file() else None, h, w,
                             (lambda s=shapes, h=h, w=w, p=p: rasterise(s, h, w, index, ignore_index, str(p))),
                             str(p), ref)
    if not entries:
        raise InputError(f"{path}: no usable LabelMe .json files" + (f" ({problems[0]})" if problems else ""))
    return Corrections("labelme", path, names, entries, problems, ignore_index)


pairs, ground_truth = layout_functions(read)
