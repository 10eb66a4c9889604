"""Read a predict output folder into one :class:`Row` per image.

``predictions.csv`` is predict's public report and exists whatever the options, so it is
the source of the image list, the classes present and the confidence figures; the
COCO file, when there is one, gives the class order (``category_id`` = class + 1) that
ground-truth scoring needs. Review and select both start here.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..images import IMAGE_EXTENSIONS
from ..predict.layout import CONFIDENCE_DIR, OutputLayout


@dataclass
class Row:
    rel: str  # mask path relative to the predict folder, without ".png"
    input: str  # the input path as predict recorded it (relative to where predict ran, or absolute)
    width: int
    height: int
    classes: dict[str, float]  # class name -> fraction of the image's pixels (every predicted class)
    mean_confidence: float
    low_confidence_fraction: float
    mean_iou: float | None = None
    pixel_accuracy: float | None = None

    @property
    def rel_input(self) -> str:
        """The input's path relative to the folder given to predict (the mask's name with the input's suffix)."""
        return self.rel + Path(self.input).suffix.lower() if Path(self.input).suffix else self.rel


@dataclass
class PredFolder:
    root: Path
    rows: list[Row]
    class_names: list[str]  # in class-index order when predictions.json exists, else in order of appearance
    class_order_known: bool
    problems: list[str] = field(default_factory=list)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.root)

    def mask(self, row: Row) -> Path:
        return self.layout.mask(row.rel)

    def confidence(self, row: Row) -> Path | None:
        p = self.layout.confidence(row.rel)
        return p if p.is_file() else None

    def overlay(self, row: Row) -> Path | None:
        p = self.layout.overlay(row.rel)
        return p if p.is_file() else None

    @property
    def has_confidence(self) -> bool:
        return (self.root / CONFIDENCE_DIR).is_dir()


def _float(v: str) -> float | None:
    if v is None or v.strip() == "":
        return None
    x = float(v)
    return None if math.isnan(x) else x


def parse_classes(cell: str) -> dict[str, float]:
    """``road:0.4100;sky:0.2000`` (predictions.csv) -> {"road": 0.41, "sky": 0.2}."""
    out: dict[str, float] = {}
    for part in (cell or "").split(";"):
        if part:
            name, _, frac = part.rpartition(":")
            out[name] = float(frac)
    return out


def read_pred_folder(pred_dir: str | os.PathLike) -> PredFolder:
    """Every image predict finished in ``pred_dir``; a malformed CSV row is one problem line, not a stop."""
    root = Path(pred_dir)
    layout = OutputLayout(root)
    csv_path = layout.predictions_csv
    if not root.is_dir():
        raise InputError(f"{root}: folder not found; give the --out folder of `fcn-label predict`")
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: not found; {root} is not a `fcn-label predict` output folder "
                         "(run fcn-label predict IMAGES --out {root} first)")
    names: list[str] = []
    known = False
    coco = layout.predictions_json
    problems: list[str] = []
    if coco.is_file():
        try:
            cats = json.loads(coco.read_text(encoding="utf-8"))["categories"]
            names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
            known = True
        except Exception as e:  # a damaged COCO file only costs the class order
            problems.append(f"{coco}: cannot read the categories ({type(e).__name__}: {e}); class order taken "
                            "from predictions.csv instead")
    rows: list[Row] = []
    try:
        text = csv_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{csv_path}: cannot read ({e.strerror or e}); check permissions") from None
    reader = csv.DictReader(text.splitlines())
    need = {"path", "mask", "width", "height", "classes", "mean_confidence", "low_confidence_fraction"}
    if not need <= set(reader.fieldnames or ()):
        raise InputError(f"{csv_path}: missing columns {sorted(need - set(reader.fieldnames or ()))}; "
                         "re-run fcn-label predict to rewrite it")
    for n, r in enumerate(reader, 2):
        try:
            mask = r["mask"]
            if not mask.endswith(".png"):
                raise ValueError(f"mask {mask!r} is not a .png")
            rows.append(Row(rel=mask[:-4], input=r["path"], width=int(r["width"]), height=int(r["height"]),
                            classes=parse_classes(r["classes"]), mean_confidence=float(r["mean_confidence"]),
                            low_confidence_fraction=float(r["low_confidence_fraction"]),
                            mean_iou=_float(r.get("mean_iou")), pixel_accuracy=_float(r.get("pixel_accuracy"))))
        except Exception as e:  # one bad line: report it, keep the others
            problems.append(f"{csv_path}:{n}: unusable row ({type(e).__name__}: {e}); re-run fcn-label predict "
                            "to rewrite the report")
    seen = set(names)
    for row in rows:
        for c in row.classes:
            if c not in seen:
                seen.add(c)
                names.append(c)
    return PredFolder(root, rows, names, known, problems)


def find_photo(row: Row, images: Path | None, pred_root: Path) -> Path | None:
    """The input image: under --images ROOT by relative path, else where predict recorded it."""
    cands: list[Path] = []
    if images is not None:
        cands.append(images / row.rel_input)
        cands += [images / f"{row.rel}{ext}" for ext in IMAGE_EXTENSIONS]
        cands.append(images / Path(row.input).name)
    p = Path(row.input)
    cands.append(p)
    if not p.is_absolute():
        cands.append(pred_root.parent / p)
    for c in cands:
        if c.is_file():
            return c
    return None
