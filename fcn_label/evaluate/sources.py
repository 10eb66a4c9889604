"""What evaluate scores: ground truth (any layout, from :mod:`fcn_label.datasets`) and predictions.

Predictions come from one of three sources behind one :class:`PredictionSource`
protocol: a folder of index PNGs ('P' or 'L'), a COCO JSON (class ids mapped as
:func:`category_map` says), or a model run on the images.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..datasets import MASK_EXTENSIONS, CocoRasteriser, GroundTruth, decode_segmentation, files_by_stem
from .. import guard
from ..guard import guarded
from ..images import DEFAULT_MAX_PIXELS, InputError, check_pixels, read_mask
from ..predfolder.reader import mask_folder_pictures

# failure kinds; all but "extra" make the evaluation incomplete (exit status 1)
ERROR, MISSING, EXTRA = "error", "missing_prediction", "extra_prediction"
# the stage each kind is in failures.csv (path,stage,reason, the schema of every verb)
STAGES = {ERROR: "evaluate", MISSING: MISSING, EXTRA: EXTRA}


@dataclass(frozen=True)
class Failure:
    kind: str
    key: str
    path: str
    message: str

    def row(self) -> guard.Failure:
        """This failure as a failures.csv row: the file (the key when there is none), the stage, the message."""
        return guard.Failure(self.path or self.key, STAGES[self.kind], self.message)


class PredictionSource(Protocol):
    """Predicted masks by key; ``load`` may raise anything: evaluate's per-file guard turns it into a row."""

    problems: list[Failure]  # found while opening the source (e.g. annotations for unknown images)
    missing_reason: str  # why a ground truth without a prediction has none

    def keys(self) -> list[str]: ...

    def path(self, key: str) -> str: ...

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray: ...


class PngPredictions:
    """Index masks in a folder (searched recursively), keyed by relative path without suffix."""

    max_pixels = DEFAULT_MAX_PIXELS  # evaluate --max-pixels: refused from the header / the COCO size

    missing_reason = "no prediction for this ground truth"

    def __init__(self, folder: str | Path, exclude: str | Path | None = None):
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--pred {folder}: folder not found; give the folder of predicted masks or a COCO JSON")
        files = files_by_stem(folder, MASK_EXTENSIONS)
        files = {k: p for k, p in files.items() if not any(part.startswith(".") for part in k.split("/"))}
        if exclude is not None:  # a report folder inside the predictions: its PNGs are pictures, not masks
            ex = Path(exclude).resolve()
            files = {k: p for k, p in files.items() if ex not in p.resolve().parents}
        pictures = mask_folder_pictures(folder)  # a prediction folder's overlays/ and confidence/
        if pictures:
            files = {k: p for k, p in files.items() if k.split("/")[0] not in pictures}
        if not files:
            raise InputError(f"--pred {folder}: no mask files ({', '.join(MASK_EXTENSIONS)}) found, searched "
                             "recursively; give the folder `fcn-label predict` wrote, or its predictions.json")
        self.files = files
        self.problems: list[Failure] = []

    def keys(self) -> list[str]:
        return list(self.files)

    def path(self, key: str) -> str:
        return str(self.files[key])

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray:
        return read_mask(self.files[key], self.max_pixels)


def category_map(categories: list[dict] | None, num_classes: int, class_names: Sequence[str] | None,
                 gt_coco: CocoRasteriser | None, where: str) -> dict[int, int]:
    """COCO category id -> class index.

    With ``categories`` in the file: by name when every name is one of the class
    names; otherwise, ids in ascending order, as 0..n-1 when there is one
    category per class (``fcn-label predict`` writes id = class index + 1,
    background included) or as 1..n-1 when background is left out (COCO
    instances convention, as ground truth is rasterised). Without categories (a
    bare results list): the ground-truth COCO file's mapping when --gt is COCO,
    else id - 1 (predict's convention).
    """
    if categories:
        try:
            ids = [int(c["id"]) for c in categories]
            names = [str(c.get("name", "")) for c in categories]
        except (TypeError, KeyError, ValueError):
            raise InputError(f"{where}: 'categories' entries need an integer 'id'; fix or re-export the file") from None
        if class_names and len(set(names)) == len(names) and all(n in class_names for n in names):
            index = {n: i for i, n in enumerate(class_names)}
            return {i: index[n] for i, n in zip(ids, names)}
        order = sorted(set(ids))
        if len(order) == num_classes:
            return {c: i for i, c in enumerate(order)}
        if len(order) == num_classes - 1:
            return {c: i + 1 for i, c in enumerate(order)}
        raise InputError(
            f"{where}: {len(order)} categories do not fit {num_classes} classes: expected {num_classes} "
            f"(one per class, background included, as `fcn-label predict` writes), {num_classes - 1} "
            "(background implicit) or names equal to the class names; check --num-classes / --classes"
        )
    if gt_coco is not None:
        return dict(gt_coco.cat_to_class)
    return {i + 1: i for i in range(num_classes)}


class CocoPredictions:
    """A COCO results file: predict's dict (images/categories/annotations) or a bare annotation list.

    Pixels no annotation covers are class 0. Where annotations overlap, the one
    with the higher ``score`` wins (ties: the later one), which is how instance
    results are usually flattened; predict's own files never overlap.
    """

    max_pixels = DEFAULT_MAX_PIXELS  # evaluate --max-pixels: refused from the header / the COCO size

    missing_reason = "no prediction for this ground truth"

    def __init__(self, path: str | Path, num_classes: int, class_names: Sequence[str] | None,
                 gt: GroundTruth | None = None):
        path = Path(path)
        self.source = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"--pred {path}: file not found; check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--pred {path}: cannot read ({e}); check the file") from None
        except json.JSONDecodeError as e:
            raise InputError(f"--pred {path}: malformed JSON ({e.msg} at line {e.lineno}); fix or re-export it") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            anns, images, cats = data["annotations"], data.get("images"), data.get("categories")
        elif isinstance(data, list):
            anns, images, cats = data, None, None
        else:
            raise InputError(f"--pred {path}: expected a COCO results list or a dict with 'annotations' "
                             "(and 'images', 'categories'), as `fcn-label predict` writes")
        gt_coco = gt.coco if gt is not None else None
        self.cat_to_class = category_map(cats, num_classes, class_names, gt_coco, f"--pred {path}")
        self.problems: list[Failure] = []
        # image id -> (key, file name, height, width)
        ids: dict = {}
        if isinstance(images, list):
            for im in images:  # one entry's problem is one failure row, whatever it is
                _, err = guarded(path, _add_image_entry, ids, im)
                if err is not None:
                    self.problems.append(Failure(ERROR, "", str(path), f"{path}: image entry {str(im)[:80]} lacks "
                                                 "'id' or 'file_name'; fix or re-export the file"))
        elif gt_coco is not None:
            for key, im in gt_coco.images.items():
                ids[im["id"]] = (key, im["file_name"], im.get("height"), im.get("width"))
        self.images: dict[str, tuple[str, int | None, int | None]] = {}
        self.anns: dict[str, list[dict]] = {}
        for key, name, h, w in ids.values():
            self.images[key] = (name, h, w)
            self.anns[key] = []
        unknown: dict = defaultdict(int)
        for a in anns:
            if not isinstance(a, dict) or "image_id" not in a:
                unknown["(annotation without image_id)"] += 1
                continue
            iid = a["image_id"]
            if iid in ids:
                key = ids[iid][0]
            elif isinstance(iid, str) and not ids:
                key = Path(iid).with_suffix("").as_posix()  # some tools use the file name as image id
                self.images.setdefault(key, (iid, None, None))
                self.anns.setdefault(key, [])
            else:
                unknown[iid] += 1
                continue
            self.anns[key].append(a)
        for iid, n in unknown.items():
            hint = ("" if ids else "; a bare results list needs --gt to be the COCO JSON whose image ids it uses, "
                    "or file names as image_id")
            self.problems.append(Failure(ERROR, str(iid), str(path), f"{path}: {n} annotation(s) for image_id "
                                         f"{iid}, which is not in the file's images{hint}"))
        if not self.images:
            raise InputError(f"--pred {path}: no images with predictions found" + (
                "" if ids else "; a bare results list needs --gt to be the COCO JSON whose image ids it uses"))
        for lst in self.anns.values():
            lst.sort(key=lambda a: _score(a))  # stable: ties keep file order, later wins

    def keys(self) -> list[str]:
        return list(self.images)

    def path(self, key: str) -> str:
        return f"{self.source}#{self.images[key][0]}"

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray:
        name, h, w = self.images[key]
        if h is None or w is None:
            sizes = [a["segmentation"].get("size") for a in self.anns[key] if isinstance(a.get("segmentation"), dict)]
            h, w = sizes[0] if sizes and sizes[0] else shape
        h, w = int(h), int(w)
        check_pixels(f"{self.source}: {name}", w, h, self.max_pixels)
        out = np.zeros((h, w), dtype=np.uint8)
        for a in self.anns[key]:
            cid = a.get("category_id")
            cls = self.cat_to_class.get(cid) if isinstance(cid, int) else None
            if cls is None:
                raise InputError(f"{self.source}: {name}: category_id {cid!r} is not one of the "
                                 f"{len(self.cat_to_class)} known categories; check --num-classes / --classes")
            try:
                m = decode_segmentation(a.get("segmentation"), h, w)
            except ValueError as e:
                raise InputError(f"{self.source}: {name}: annotation {a.get('id', '?')} {e}; re-export the file") from None
            if m is not None:
                out[m] = cls
        return out


def _add_image_entry(ids: dict, im: dict) -> None:
    key = Path(str(im["file_name"])).with_suffix("").as_posix()
    ids[im["id"]] = (key, str(im["file_name"]), im.get("height"), im.get("width"))


def _score(a: dict) -> float:
    s = a.get("score", 0.0)
    return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else 0.0


class ModelPredictions:
    """Predictions made on the fly by a :class:`fcn_label.predict.Predictor` (one forward pass at a time)."""

    max_pixels = DEFAULT_MAX_PIXELS  # evaluate --max-pixels: refused from the header / the COCO size

    missing_reason = "no image found for this ground truth; give the image folder with --images"

    def __init__(self, predictor, images: dict[str, Path]):
        self.predictor = predictor
        self.images = images
        self.problems: list[Failure] = []
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self.images)

    def path(self, key: str) -> str:
        return str(self.images[key])

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray:
        from ..predict.predictor import read_for_model

        img = read_for_model(self.images[key], self.max_pixels)
        if img.shape[:2] != tuple(shape):
            raise InputError(f"{self.images[key]}: image is {img.shape[1]}x{img.shape[0]} but its ground truth is "
                             f"{shape[1]}x{shape[0]}; masks must match their images")
        with self._lock:  # torch already uses every core; concurrent forwards only contend
            return self.predictor.predict_arrays([img])[0].labels


def open_predictions(pred: str | Path, gt: GroundTruth, num_classes: int, class_names: Sequence[str] | None,
                     report_dir: str | Path | None = None):
    """A COCO JSON file or a mask folder (leaving out ``report_dir`` should it lie inside)."""
    pred = Path(pred)
    if pred.is_file() or pred.suffix.lower() == ".json":
        return CocoPredictions(pred, num_classes, class_names, gt)
    return PngPredictions(pred, exclude=report_dir)
