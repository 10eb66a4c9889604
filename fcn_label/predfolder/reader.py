"""Reading a prediction folder: the one way evaluate, review, select and export see predict's --out.

:class:`PredictionFolder` opens the folder (refusing, in one line, a format this version cannot
read) and offers its three views:

* :meth:`~PredictionFolder.items`: one :class:`PredItem` per record in the record store, the source
  of truth that maps each mask to its input photo (export);
* :meth:`~PredictionFolder.report`: predictions.csv, predict's public report, which exists whatever
  the options, as one :class:`Row` per image (review, select);
* :meth:`~PredictionFolder.categories`: the class order and the model from predictions.json
  (``category_id`` = class index + 1).

:func:`mask_folder_pictures` tells evaluate which sub-folders of a mask folder hold pictures, and
:func:`find_photo` is the one way an input photo is found again.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..guard import guarded
from ..images import IMAGE_EXTENSIONS, read_mask
from .layout import AUX_DIRS, CONFIDENCE_DIR, OutputLayout
from .records import iter_segment_records
from .version import folder_version


@dataclass(frozen=True)
class PredItem:
    """One finished image, from its record."""

    rel: str  # mask path relative to the folder, without suffix (POSIX)
    mask: Path
    source: str  # the input path predict recorded ('' when unknown)
    width: int
    height: int
    mean_confidence: float | None

    def labels(self) -> np.ndarray:
        m = read_mask(self.mask)
        if m.shape != (self.height, self.width):
            raise InputError(f"{self.mask}: mask is {m.shape[1]}x{m.shape[0]} but its record says "
                             f"{self.width}x{self.height}; re-run predict on this image with --overwrite")
        return m


@dataclass
class Row:
    """One predictions.csv row."""

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
class Report:
    """predictions.csv read back: every image predict finished, with the class names in order."""

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

    def find_photo(self, row: Row, images: Path | None) -> Path | None:
        return find_photo(self.root, row.rel, row.input, images)


def find_photo(root: Path, rel: str, source: str, images: Path | None) -> Path | None:
    """The input photo of the mask ``rel`` of folder ``root``, whose input predict recorded as ``source``.

    With ``images`` (the photos' folder, moved or copied): under it by the mask's relative name with the
    input's suffix, with any image suffix (lower, then upper case), then by the input's file name.
    Without: the recorded path, from the current folder and then from the folder holding ``root``.
    None when there is no such file.
    """
    src = Path(source) if source else None
    if images is not None:
        base = images / rel
        cands = [base.with_name(base.name + src.suffix)] if src is not None and src.suffix else []
        cands += [base.with_name(base.name + e) for e in IMAGE_EXTENSIONS]
        cands += [base.with_name(base.name + e.upper()) for e in IMAGE_EXTENSIONS]
        if src is not None:
            cands.append(images / src.name)
    else:
        cands = [] if src is None else [src] + ([] if src.is_absolute() else [root.parent / src])
    return next((c for c in cands if c.is_file()), None)


def mask_folder_pictures(folder: Path) -> tuple[str, ...]:
    """The top-level sub-folders of a mask folder that hold pictures, not masks: predict's overlays and
    confidence maps when predict wrote it (after checking its format), none otherwise."""
    layout = OutputLayout(folder)
    if not layout.is_predict_output():
        return ()
    folder_version(layout)
    return AUX_DIRS


def _float(v: str | None) -> float | None:
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


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e}); check the path") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); re-run predict") from None


def _walk_order(rel: str) -> tuple:
    """Files of a folder before its sub-folders, as the records of earlier versions were listed."""
    *dirs, name = rel.split("/")
    return tuple((1, d) for d in dirs) + ((0, name + ".json"),)


class PredictionFolder:
    """A folder ``fcn-label predict`` wrote, opened for reading; refused in one line when it is not one
    or its format is one this version cannot read."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.layout = OutputLayout(self.root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: folder not found; give the --out folder of `fcn-label predict`")
        self.version = folder_version(self.layout)

    # -- the record store ------------------------------------------------------
    def items(self) -> tuple[list[PredItem], list[str]]:
        """Every finished image from the record store (the last line of an image wins), and one line
        per record or mask that could not be used."""
        rec_dir = self.layout.records_dir
        if not rec_dir.is_dir():
            raise InputError(f"{self.root}: no {rec_dir.relative_to(self.root).as_posix()} folder; give the "
                             "--out folder of `fcn-label predict`")
        problems: list[str] = []
        found: dict[str, PredItem] = {}
        for seg, k, line in iter_segment_records(self.layout):
            where = f"{seg}:{k}"
            item, err = guarded(where, self._segment_item, where, line)  # one bad line: one line, the rest goes on
            if err:
                problems.append(err)
            else:
                found[item.rel] = item
        return [found[r] for r in sorted(found, key=_walk_order)], problems

    def _segment_item(self, where: str, line: bytes) -> PredItem:
        try:
            r = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: malformed JSON ({getattr(e, 'msg', e)}); re-run predict") from None
        fn = r.get("file_name") if isinstance(r, dict) else None
        if not isinstance(fn, str) or not fn.endswith(".png"):
            raise InputError(f"{where}: field 'file_name' missing or not a .png name; re-run predict on this image "
                             "with --overwrite")
        rel, p = fn[:-4], f"{where} ({fn[:-4]})"
        for name in ("width", "height"):
            if not isinstance(r.get(name), int):
                raise InputError(f"{p}: field {name!r} missing or not an integer; re-run predict on this image "
                                 "with --overwrite")
        mask = self.layout.mask(rel)
        if not mask.is_file():
            raise InputError(f"{mask}: mask missing for record {p}; re-run predict to finish it")
        mc = r.get("mean_confidence")
        return PredItem(rel, mask, str(r.get("path", "")), r["width"], r["height"],
                        float(mc) if isinstance(mc, (int, float)) else None)

    # -- predictions.json --------------------------------------------------------
    def categories(self) -> tuple[list[str], str] | None:
        """``(class names in index order, model name)`` from predictions.json; None without one (--no-coco)."""
        pj = self.layout.predictions_json
        if not pj.is_file():
            return None
        d = _json(pj)
        try:
            cats = sorted(d["categories"], key=lambda c: c["id"])
            if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
                raise InputError(f"{pj}: field 'categories': ids must be 1..N (class index + 1); re-run predict")
            return [str(c["name"]) for c in cats], str((d.get("info") or {}).get("model", ""))
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{pj}: field 'categories' unusable ({type(e).__name__}: {e}); re-run predict") from None

    # -- predictions.csv -----------------------------------------------------------
    def report(self) -> Report:
        """predictions.csv as rows; a malformed row is one problem line, not a stop, and a damaged
        predictions.json only costs the class order."""
        csv_path = self.layout.predictions_csv
        if not csv_path.is_file():
            raise InputError(f"{csv_path}: not found; {self.root} is not a `fcn-label predict` output folder "
                             f"(run fcn-label predict IMAGES --out {self.root} first)")
        names: list[str] = []
        known = False
        problems: list[str] = []
        try:
            cats = self.categories()
        except InputError as e:
            cats = None
            problems.append(f"{e}; class order taken from predictions.csv instead")
        if cats is not None:
            names, known = list(cats[0]), True
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
        return Report(self.root, rows, names, known, problems)


def read_report(pred_dir: str | os.PathLike) -> Report:
    """predictions.csv of the prediction folder ``pred_dir`` (what review and select start from)."""
    return PredictionFolder(pred_dir).report()
