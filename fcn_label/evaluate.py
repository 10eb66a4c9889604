"""Scoring predicted masks against ground truth with the FCN paper's metrics.

Dataset figures come from one confusion matrix accumulated over every pixel of
every image (see :mod:`fcn_label.metrics`), never from averaging per-image
numbers, so they are the ones published tables report. Masks are decoded by a
few threads (PNG decoding releases the GIL), scored, and dropped at once:
memory holds one small row per image, never the masks.

Matching: ground truth and predictions are paired by relative path without
suffix ("val/0001.png" <-> "val/0001.png"); what is left is paired when one
name is a trailing part of the other ("val/0001" <-> "0001") and that is
unambiguous. Whatever stays unpaired is reported, never silently dropped.

Ground truth: a folder of index masks, a VOC root (SegmentationClass/),
images/ + masks/, a list file of "image mask" lines, or a COCO instances JSON,
rasterised by :class:`fcn_label.data.CocoRasteriser`: background 0, categories
sorted by id -> 1..K, later annotations paint over earlier ones where they
overlap, iscrowd regions get the ignore label.

Predictions: a folder of index PNGs ('P' or 'L'), a COCO JSON (class ids
mapped as described in :func:`category_map`), or a model run on the images.
"""

from __future__ import annotations

import csv
import heapq
import io as _io
import json
import math
import threading
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .data import CocoRasteriser, _files_by_stem, decode_segmentation, detect_layout, load_pairs
from .io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, InputError, atomic_path, read_image, read_mask, write_text_atomic
from .metrics import Scores, count_pixels, scores

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
# Sub-folders `fcn-label predict` writes beside the masks; their PNGs are not class masks.
PREDICT_AUX_DIRS = ("confidence", "overlays")
IGNORE_COLOUR = (224, 224, 192)  # VOC's void colour, used for ignored ground truth in pictures

# failure kinds; all but "extra" make the evaluation incomplete (exit status 1)
ERROR, MISSING, EXTRA = "error", "missing_prediction", "extra_prediction"


@dataclass(frozen=True)
class Failure:
    kind: str
    key: str
    path: str
    message: str


# ---------------------------------------------------------------------------
# Matching


def _tails(key: str) -> list[str]:
    parts = key.split("/")
    return ["/".join(parts[i:]) for i in range(1, len(parts))]


def match_keys(gt_keys: Iterable[str], pred_keys: Iterable[str]) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
    """Pair keys: exact first, then by unambiguous trailing path components.

    Returns ``{gt_key: pred_key}``, the unmatched ground-truth keys, and
    ``(pred_key, reason)`` for each unmatched prediction.
    """
    gt_keys, pred_keys = list(gt_keys), list(pred_keys)
    pred_set = set(pred_keys)
    matched = {k: k for k in gt_keys if k in pred_set}
    rest_gt = [k for k in gt_keys if k not in matched]
    rest_pred = [k for k in pred_keys if k not in matched]
    # "val/0001" vs "0001": index both sides by every trailing part of the name
    gt_by_tail: dict[str, list[str]] = defaultdict(list)
    for g in rest_gt:
        for t in [g] + _tails(g):
            gt_by_tail[t].append(g)
    rest_gt_set = set(rest_gt)
    claimed: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for p in rest_pred:
        cands = set(gt_by_tail.get(p, ())) | {t for t in _tails(p) if t in rest_gt_set}
        if len(cands) == 1:
            g = cands.pop()
            if g in claimed:
                extra.append((p, f"ground truth {g} is already paired with prediction {claimed[g]}"))
            else:
                claimed[g] = p
        elif cands:
            extra.append((p, f"name fits several ground-truth files ({', '.join(sorted(cands)[:3])}); "
                             "keep the same relative paths on both sides"))
        else:
            extra.append((p, "no ground truth with this name"))
    matched.update(claimed)
    missing = [g for g in rest_gt if g not in claimed]
    return matched, missing, extra


# ---------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class GtItem:
    key: str
    mask: Path | None  # None: rasterised from the COCO JSON
    image: Path | None  # only needed for pictures and for --weights


class GroundTruth:
    """Ground-truth masks by key, from any layout :mod:`fcn_label.data` knows plus a bare mask folder."""

    def __init__(self, source: str | Path, images: str | Path | None = None, split: str | None = None,
                 ignore_index: int = 255):
        source = Path(source)
        images = Path(images) if images else None
        self.source = source
        self.coco: CocoRasteriser | None = None
        self.problems: list[str] = []
        self.max_pixels = DEFAULT_MAX_PIXELS  # per mask: the decompression-bomb guard, as predict's
        if not source.exists():
            raise InputError(f"{source}: ground truth not found; give a folder of masks, a VOC root, a list file "
                             "of 'image mask' lines or a COCO instances JSON")
        if images is not None and not images.is_dir():
            raise InputError(f"--images {images}: folder not found; check the path")
        is_voc = source.is_dir() and (source / "JPEGImages").is_dir() and (source / "SegmentationClass").is_dir()
        if split and not is_voc:
            raise InputError(f"--split {split}: only applies to a VOC root (JPEGImages/ + SegmentationClass/ + "
                             f"ImageSets/Segmentation/), and {source} is not one; drop --split")
        if source.is_file() and source.suffix.lower() == ".json":
            self.layout = "coco"
            self.coco = CocoRasteriser(source, ignore_index)
            root = images or source.parent / "images"
            items = {}
            for k, im in self.coco.images.items():
                p = root / im["file_name"]
                items[k] = GtItem(k, None, p if p.is_file() else None)
        elif source.is_file() or split:
            self.layout = detect_layout(source)
            pairs, self.problems, _ = load_pairs(source, split=split, ignore_index=ignore_index)
            items = {p.key: GtItem(p.key, p.mask, p.image) for p in pairs}
        else:
            # a folder: every mask counts; images are optional (only for pictures / --weights)
            if is_voc:
                self.layout, masks, imgs = "voc", source / "SegmentationClass", source / "JPEGImages"
            elif (source / "images").is_dir() and (source / "masks").is_dir():
                self.layout, masks, imgs = "folders", source / "masks", source / "images"
            else:
                self.layout, masks, imgs = "masks", source, None
            files = _files_by_stem(masks, MASK_EXTENSIONS)
            image_files = _files_by_stem(images or imgs, IMAGE_EXTENSIONS) if (images or imgs) else {}
            if images is not None:
                pairing, _, _ = match_keys(files, image_files)
            else:
                pairing = {k: k for k in files if k in image_files}
            items = {k: GtItem(k, p, image_files[pairing[k]] if k in pairing else None) for k, p in files.items()}
        if not items:
            raise InputError(f"{source}: no ground-truth masks found ({self.layout} layout); "
                             + ("; ".join(self.problems[:3]) if self.problems else "check the path"))
        self.items = items
        if images is not None and self.layout == "list":
            self.attach_images(images)

    def attach_images(self, folder: Path) -> None:
        """Use images from ``folder`` (matched by name) for pictures and --weights."""
        image_files = _files_by_stem(folder, IMAGE_EXTENSIONS)
        pairing, _, _ = match_keys(self.items, image_files)
        self.items = {k: GtItem(k, it.mask, image_files[pairing[k]] if k in pairing else it.image)
                      for k, it in self.items.items()}

    def class_names(self) -> list[str] | None:
        return list(self.coco.class_names) if self.coco else None

    def path(self, key: str) -> str:
        it = self.items[key]
        return str(it.mask) if it.mask is not None else f"{self.source}#{self.coco.images[key]['file_name']}"

    def load(self, key: str) -> np.ndarray:
        it = self.items[key]
        if it.mask is not None:
            return read_mask(it.mask, self.max_pixels)
        im = self.coco.images[key]
        h, w = int(im["height"]), int(im["width"])
        if h * w > self.max_pixels:
            raise InputError(f"{self.path(key)}: {w}x{h} pixels exceeds the limit of {self.max_pixels:,} pixels; "
                             "raise --max-pixels if the image is genuine")
        return self.coco.mask(key, (h, w))


# ---------------------------------------------------------------------------
# Predictions


class PngPredictions:
    """Index masks in a folder (searched recursively), keyed by relative path without suffix."""

    def __init__(self, folder: str | Path, exclude: str | Path | None = None):
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--pred {folder}: folder not found; give the folder of predicted masks or a COCO JSON")
        files = _files_by_stem(folder, MASK_EXTENSIONS)
        files = {k: p for k, p in files.items() if not any(part.startswith(".") for part in k.split("/"))}
        if exclude is not None:  # a report folder inside the predictions: its PNGs are pictures, not masks
            ex = Path(exclude).resolve()
            files = {k: p for k, p in files.items() if ex not in p.resolve().parents}
        if (folder / ".fcn-label").is_dir() or (folder / "predictions.json").is_file():
            files = {k: p for k, p in files.items() if k.split("/")[0] not in PREDICT_AUX_DIRS}
        if not files:
            raise InputError(f"--pred {folder}: no mask files ({', '.join(MASK_EXTENSIONS)}) found, searched "
                             "recursively; give the folder `fcn-label predict` wrote, or its predictions.json")
        self.files = files
        self.problems: list[Failure] = []
        self.max_pixels = DEFAULT_MAX_PIXELS

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
            for im in images:
                try:
                    key = Path(str(im["file_name"])).with_suffix("").as_posix()
                    ids[im["id"]] = (key, str(im["file_name"]), im.get("height"), im.get("width"))
                except (KeyError, TypeError):
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
        if h * w > getattr(self, "max_pixels", DEFAULT_MAX_PIXELS):
            raise InputError(f"{self.source}: {name}: {w}x{h} pixels exceeds the limit of "
                             f"{self.max_pixels:,} pixels; raise --max-pixels if the image is genuine")
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


def _score(a: dict) -> float:
    s = a.get("score", 0.0)
    return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else 0.0


class ModelPredictions:
    """Predictions made on the fly by a :class:`fcn_label.predict.Predictor` (one forward pass at a time)."""

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
        img = read_image(self.images[key], getattr(self, "max_pixels", DEFAULT_MAX_PIXELS))
        if img.shape[:2] != tuple(shape):
            raise InputError(f"{self.images[key]}: image is {img.shape[1]}x{img.shape[0]} but its ground truth is "
                             f"{shape[1]}x{shape[0]}; masks must match their images")
        with self._lock:  # torch already uses every core; concurrent forwards only contend
            return self.predictor.predict_arrays([img])[0].labels


# ---------------------------------------------------------------------------
# Evaluation


@dataclass
class WorstImage:
    key: str
    mean_iou: float
    pixel_accuracy: float
    gt: np.ndarray  # thumbnail
    pred: np.ndarray  # thumbnail
    image: Path | None


@dataclass
class EvalResult:
    """Everything a report needs; dataset figures from the pooled confusion matrix."""

    class_names: list[str]
    ignore_index: int | None
    conf: np.ndarray
    scores: Scores
    per_image: "object"  # pandas.DataFrame
    failures: list[Failure]
    pixels_ignored: int = 0
    pixels_gt_out_of_range: int = 0
    n_ground_truth: int = 0
    n_predictions: int = 0
    worst: list[WorstImage] = field(default_factory=list)
    seconds: float = 0.0
    gt_images: np.ndarray | None = None  # per class: images whose ground truth has it

    @property
    def n_evaluated(self) -> int:
        return len(self.per_image)

    @property
    def complete(self) -> bool:
        """True when every ground-truth image was scored (extra predictions do not count against it)."""
        return not any(f.kind != EXTRA for f in self.failures)

    @property
    def absent_classes(self) -> list[str]:
        return [n for n, v in zip(self.class_names, self.scores.iou) if np.isnan(v)]

    def summary(self) -> dict[str, float | int]:
        """The paper's four figures, then counts that say how much of the data they cover."""
        s = self.scores
        rows = [
            ("pixel_accuracy", s.pixel_accuracy), ("mean_accuracy", s.mean_accuracy),
            ("mean_iou", s.mean_iou), ("fw_iou", s.fw_iou),
            ("images_evaluated", self.n_evaluated), ("images_failed", sum(f.kind == ERROR for f in self.failures)),
            ("missing_predictions", sum(f.kind == MISSING for f in self.failures)),
            ("extra_predictions", sum(f.kind == EXTRA for f in self.failures)),
            ("classes_counted", int(np.sum(~np.isnan(s.iou)))), ("classes_absent", len(self.absent_classes)),
            ("pixels_evaluated", int(self.conf.sum())), ("pixels_ignored", self.pixels_ignored),
            ("pixels_gt_out_of_range", self.pixels_gt_out_of_range),
        ]
        return dict(rows)

    def summary_frame(self):
        import pandas as pd

        return pd.DataFrame([(k, _fmt(v)) for k, v in self.summary().items()], columns=["metric", "value"])

    def per_class_frame(self):
        import pandas as pd

        s = self.scores
        return pd.DataFrame({
            "class_index": np.arange(len(self.class_names)),
            "class": self.class_names,
            "iou": s.iou,
            "accuracy": s.accuracy,
            "precision": s.precision,
            "true_positive_pixels": np.diag(self.conf).astype(np.int64),
            "gt_pixels": s.support,
            "predicted_pixels": s.predicted,
            "support_fraction": s.support / max(1, int(s.support.sum())),
            "gt_images": self.gt_images if self.gt_images is not None else np.zeros(len(self.class_names), np.int64),
            "absent": np.isnan(s.iou),
        })

    def confusion_frame(self):
        import pandas as pd

        df = pd.DataFrame(self.conf, index=self.class_names, columns=self.class_names)
        df.index.name = "gt \\ pred"
        return df

    def failures_frame(self):
        import pandas as pd

        return pd.DataFrame([(f.kind, f.key, f.path, f.message) for f in self.failures],
                            columns=["kind", "key", "path", "message"])

    def to_dict(self) -> dict:
        """JSON-ready: summary, per-class figures, absent classes, failures (NaN -> null)."""
        def num(v):
            v = float(v)
            return None if math.isnan(v) else v

        summ = {m: (num(v) if isinstance(v, float) else int(v)) for m, v in self.summary().items()}
        per_class = [{k: (num(v) if isinstance(v, (float, np.floating)) else (v.item() if hasattr(v, "item") else v))
                      for k, v in row.items()} for row in self.per_class_frame().to_dict(orient="records")]
        return {
            "summary": summ,
            "per_class": per_class,
            "absent_classes": self.absent_classes,
            "ignore_index": self.ignore_index,
            "failures": [f.__dict__ for f in self.failures],
        }


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6f}"
    return str(int(v))


def _thumb(a: np.ndarray, height: int) -> np.ndarray:
    step = max(1, math.ceil(a.shape[0] / height))
    return np.ascontiguousarray(a[::step, ::step])


def _bounded_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """``map`` over a thread pool with a few jobs in flight, in order: memory stays flat."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="fcn-eval") as ex:
        pending: deque = deque()
        for it in items:
            pending.append(ex.submit(fn, it))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def evaluate(gt: GroundTruth, pred, num_classes: int, class_names: Sequence[str] | None = None,
             ignore_index: int | None = 255, workers: int = 2, worst_k: int = 8,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score ``pred`` (PngPredictions / CocoPredictions / ModelPredictions) against ``gt``.

    Per-file problems (unreadable, size mismatch, class index >= num_classes)
    become :class:`Failure` rows and the rest goes on.
    """
    import time

    import pandas as pd

    t0 = time.perf_counter()
    n = int(num_classes)
    names = list(class_names) if class_names else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    matched, missing, extra = match_keys(gt.items, pred.keys())
    failures: list[Failure] = [Failure(ERROR, "", str(gt.source), m) for m in gt.problems]
    failures += list(pred.problems)
    why_missing = getattr(pred, "missing_reason", "no prediction for this ground truth")
    failures += [Failure(MISSING, k, gt.path(k), f"{gt.path(k)}: {why_missing}") for k in missing]
    failures += [Failure(EXTRA, k, pred.path(k), f"{pred.path(k)}: {why}") for k, why in extra]
    jobs = sorted(matched.items())

    def score_one(job: tuple[str, str]):
        gkey, pkey = job
        try:
            g = gt.load(gkey)
            p = pred.load(pkey, g.shape)
            if g.shape != p.shape:
                return InputError(f"{pred.path(pkey)}: prediction is {p.shape[1]}x{p.shape[0]} but ground truth "
                                  f"{gt.path(gkey)} is {g.shape[1]}x{g.shape[0]}; predict at the image's size")
            c = count_pixels(g, p, n, ignore_index)
            if c.bad_pred.any():
                bad = c.bad_values()
                return InputError(f"{pred.path(pkey)}: {int(c.bad_pred.sum()):,} scored pixels predicted as class "
                                  f"{', '.join(map(str, bad))}, outside 0..{n - 1}; check --num-classes or the predictions")
            return gkey, pkey, c, scores(c.conf), g, p
        except InputError as e:
            return e
        except (ValueError, OSError, MemoryError) as e:
            return InputError(f"{pred.path(pkey)}: {e}")
        except Exception as e:  # a batch must finish; the row names the file and the error
            return InputError(f"{pred.path(pkey)}: unexpected {type(e).__name__}: {e}")

    conf = np.zeros((n, n), dtype=np.int64)
    gt_images = np.zeros(n, dtype=np.int64)
    rows, iou_rows = [], []
    ignored = out_of_range = 0
    heap: list = []  # the worst_k images so far, as a max-heap on mean IoU
    for i, (job, res) in enumerate(zip(jobs, _bounded_map(score_one, jobs, workers)), 1):
        if isinstance(res, InputError):
            failures.append(Failure(ERROR, job[0], pred.path(job[1]), str(res)))
        else:
            gkey, pkey, c, s, g, p = res
            conf += c.conf
            gt_images += s.support > 0
            ignored += c.ignored
            out_of_range += c.gt_out_of_range
            rows.append((gkey, gt.path(gkey), pred.path(pkey), g.shape[1], g.shape[0], int(c.conf.sum()),
                         c.ignored, c.gt_out_of_range, s.pixel_accuracy, s.mean_iou))
            iou_rows.append(s.iou)
            if worst_k > 0 and not math.isnan(s.mean_iou):
                entry = (-s.mean_iou, -s.pixel_accuracy, i, gkey)
                if len(heap) < worst_k or entry > heap[0][:4]:
                    item = entry + (WorstImage(gkey, s.mean_iou, s.pixel_accuracy, _thumb(g, 180), _thumb(p, 180),
                                               gt.items[gkey].image),)
                    (heapq.heappush if len(heap) < worst_k else heapq.heappushpop)(heap, item)
        if progress:
            progress(i, len(jobs))
    cols = ["key", "gt", "pred", "width", "height", "pixels_evaluated", "pixels_ignored", "pixels_gt_out_of_range",
            "pixel_accuracy", "mean_iou"]
    per_image = pd.DataFrame(rows, columns=cols)
    ious = np.stack(iou_rows) if iou_rows else np.zeros((0, n))
    per_image = pd.concat([per_image, pd.DataFrame(ious, columns=[f"iou_{c}" for c in names])], axis=1)
    worst = [h[-1] for h in sorted(heap, key=lambda h: (-h[0], -h[1], h[2]))]
    return EvalResult(names, ignore_index, conf, scores(conf), per_image, failures, ignored, out_of_range,
                      len(gt.items), len(pred.keys()), worst, time.perf_counter() - t0, gt_images)


# ---------------------------------------------------------------------------
# Reports


def _csv_atomic(df, path: Path, index: bool = False) -> None:
    buf = _io.StringIO()
    df.to_csv(buf, index=index, float_format="%.6f", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    write_text_atomic(path, buf.getvalue())


def _png_atomic(im, path: Path) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def write_report(result: EvalResult, out: str | Path, palette: Sequence[Sequence[int]] | None = None) -> list[Path]:
    """summary/per_class/per_image/confusion_matrix/failures CSVs and two PNGs, each written atomically."""
    out = Path(out)
    palette = palette or default_palette(result.class_names)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df, index in (("summary.csv", result.summary_frame(), False),
                            ("per_class.csv", result.per_class_frame(), False),
                            ("per_image.csv", result.per_image, False),
                            ("confusion_matrix.csv", result.confusion_frame(), True),
                            ("failures.csv", result.failures_frame(), False)):
        _csv_atomic(df, out / name, index)
        written.append(out / name)
    _png_atomic(render_confusion(result.conf, result.class_names), out / "confusion_matrix.png")
    written.append(out / "confusion_matrix.png")
    worst = out / "worst_images.png"
    if result.worst:
        _png_atomic(render_worst(result.worst, palette, result.ignore_index, len(result.class_names)), worst)
        written.append(worst)
    else:
        worst.unlink(missing_ok=True)  # a picture from an earlier run would no longer describe this report
    return written


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_w(draw, text: str, font) -> int:
    b = draw.textbbox((0, 0), text, font=font)
    return b[2] - b[0]


def render_confusion(conf: np.ndarray, class_names: Sequence[str]):
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a PIL image."""
    from PIL import Image, ImageDraw

    n = conf.shape[0]
    rows = conf.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, conf / np.maximum(rows, 1), np.nan)
    cell = int(np.clip(560 // max(n, 1), 6, 44))
    font = _font(max(9, min(14, cell - 4)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_w(probe, s, font) for s in class_names) + 10
    top, left = label_w + 28, label_w + 28
    W, H = left + n * cell + 12, top + n * cell + 12
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((8, 6), "confusion matrix: rows = ground truth, columns = prediction, normalised per row",
           fill="black", font=_font(12))
    lo, hi = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    for i in range(n):
        d.text((left - 6 - _text_w(d, class_names[i], font), top + i * cell + (cell - 12) // 2), class_names[i],
               fill="black", font=font)
        # column labels: drawn on a strip, rotated to read bottom-up
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((label_w - 4 - _text_w(d, class_names[i], font), (cell - 12) // 2),
                                   class_names[i], fill="black", font=font)
        im.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w - 4))
        for j in range(n):
            v = norm[i, j]
            x0, y0 = left + j * cell, top + i * cell
            colour = (240, 240, 240) if np.isnan(v) else tuple(int(c) for c in lo + (hi - lo) * v)
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            if cell >= 26 and not np.isnan(v) and v >= 0.005:
                t = f"{100 * v:.0f}"
                d.text((x0 + (cell - _text_w(d, t, font)) // 2, y0 + (cell - 12) // 2), t,
                       fill="white" if v > 0.5 else "black", font=font)
    return im


def default_palette(class_names: Sequence[str]) -> list[tuple[int, int, int]] | None:
    """CamVid's own colours when the classes are CamVid's; None means the VOC colour map."""
    from .weights import CAMVID_CLASSES, CAMVID_PALETTE

    return list(CAMVID_PALETTE) if tuple(class_names) == tuple(CAMVID_CLASSES) else None


def colourise(mask: np.ndarray, palette: Sequence[Sequence[int]] | None, ignore_index: int | None,
              num_classes: int) -> np.ndarray:
    from .weights import voc_palette

    lut = np.array(voc_palette(256), dtype=np.uint8)
    if palette:
        lut[: len(palette)] = np.array(palette, dtype=np.uint8)[:256]
    lut[num_classes:] = IGNORE_COLOUR
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = IGNORE_COLOUR
    return lut[mask]


def render_worst(worst: Sequence[WorstImage], palette, ignore_index: int | None, num_classes: int,
                 cell: tuple[int, int] = (240, 180)):
    """Rows of image | ground truth | prediction for the lowest-scoring images."""
    from PIL import Image, ImageDraw

    cw, ch = cell
    pad, head = 6, 18
    W = 3 * cw + 4 * pad
    H = head + len(worst) * (ch + head + pad) + pad
    im = Image.new("RGB", (W, H), (40, 40, 40))
    d = ImageDraw.Draw(im)
    font = _font(12)
    for c, t in enumerate(("image", "ground truth", "prediction")):
        d.text((pad + c * (cw + pad), 3), t, fill="white", font=font)
    for r, w in enumerate(worst):
        y = head + r * (ch + head + pad)
        d.text((pad, y + 2), f"{w.key}   mean IoU {w.mean_iou:.3f}   pixel acc {w.pixel_accuracy:.3f}",
               fill=(255, 220, 120), font=font)
        y += head
        panels = [None, colourise(w.gt, palette, ignore_index, num_classes),
                  colourise(w.pred, palette, None, num_classes)]
        if w.image is not None:
            try:
                panels[0] = read_image(w.image)
            except InputError:
                panels[0] = None
        for c, arr in enumerate(panels):
            x = pad + c * (cw + pad)
            if arr is None:
                d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(90, 90, 90))
                d.text((x + 8, y + ch // 2 - 6), "no image", fill="white", font=font)
                continue
            p = Image.fromarray(arr)
            p.thumbnail((cw, ch), Image.Resampling.NEAREST if c else Image.Resampling.BILINEAR)
            im.paste(p, (x + (cw - p.width) // 2, y + (ch - p.height) // 2))
    return im


# ---------------------------------------------------------------------------
# Setup helpers shared by the CLI and Python callers


def open_predictions(pred: str | Path, gt: GroundTruth, num_classes: int, class_names: Sequence[str] | None,
                     report_dir: str | Path | None = None):
    """A COCO JSON file or a mask folder (leaving out ``report_dir`` should it lie inside)."""
    pred = Path(pred)
    if pred.is_file() or pred.suffix.lower() == ".json":
        return CocoPredictions(pred, num_classes, class_names, gt)
    return PngPredictions(pred, exclude=report_dir)


@dataclass
class ClassSpec:
    """Class names (their count is N), colours for pictures, and where they came from."""

    names: list[str]
    palette: list[tuple[int, int, int]] | None
    source: str

    @property
    def num(self) -> int:
        return len(self.names)


def _json_categories(pred: str | Path | None) -> list[str] | None:
    """Category names of a prediction JSON, or of the predictions.json predict left beside its masks."""
    if pred is not None and Path(pred).is_dir():
        pred = Path(pred) / "predictions.json"
    if pred is None or not Path(pred).is_file():
        return None
    try:
        data = json.loads(Path(pred).read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: int(c["id"])) if isinstance(data, dict) else None
        return [str(c.get("name", f"class_{i}")) for i, c in enumerate(cats)] if cats else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # the predictions reader reports a broken file properly


def resolve_classes(num_classes: int | None = None, classes_file: str | Path | None = None, checkpoint=None,
                    gt: GroundTruth | None = None, pred: str | Path | None = None) -> ClassSpec:
    """Class names from the first source that has them, so CamVid/VOC/COCO need no flags.

    Order: --classes, the --weights model, a COCO ground truth's categories, a
    ``classes.txt`` beside the ground truth, VOC's 21 names for a VOC root, the
    categories of the prediction JSON (or of predict's predictions.json in the
    prediction folder); --num-classes checks (or, alone, sets) the
    count. Colours: the file's or model's, else a palette mask's, else CamVid's
    for CamVid names, else the VOC colour map.
    """
    from .data import find_class_file, mask_palette, read_class_file
    from .weights import VOC_CLASSES

    spec = None
    if classes_file is not None:
        names, pal = read_class_file(classes_file)
        spec = ClassSpec(names, pal, str(classes_file))
        if num_classes is not None and num_classes != spec.num:
            raise InputError(f"--num-classes {num_classes} but --classes {classes_file} lists {spec.num} names; "
                             "drop one or fix the file")
    if checkpoint is not None:
        n = checkpoint.config.num_classes
        if num_classes is not None and num_classes != n:
            raise InputError(f"--num-classes {num_classes} but the model predicts {n} classes; drop --num-classes")
        if spec is not None and spec.num != n:
            raise InputError(f"--classes lists {spec.num} names but the model predicts {n} classes")
        spec = spec or ClassSpec(list(checkpoint.classes), None, "the model")
        spec.palette = spec.palette or [tuple(c) for c in checkpoint.palette]
    if spec is None:
        found = find_class_file(gt.source) if gt is not None else None
        candidates = [
            (gt.class_names() if gt is not None else None, None, f"{gt.source if gt else ''} categories"),
            (*(read_class_file(found) if found else (None, None)), str(found)),
            (list(VOC_CLASSES) if gt is not None and gt.layout == "voc" else None, None, "VOC's class list"),
            (_json_categories(pred), None, f"the categories of the predictions in {pred}"),
        ]
        for names, pal, src in candidates:
            if names and (num_classes is None or len(names) == num_classes):
                spec = ClassSpec(list(names), pal, src)
                break
    if spec is None:
        if num_classes is None:
            raise InputError(
                "cannot tell the number of classes: give --num-classes N, or --classes FILE (one name per line), "
                "or --weights (the model's classes), or put a classes.txt beside the ground truth; "
                "e.g. CamVid: --classes camvid/classes.txt --ignore-index 11, VOC: --num-classes 21"
            )
        spec = ClassSpec([f"class_{i}" for i in range(num_classes)], None, "--num-classes")
    if spec.palette is None and gt is not None:
        first = next((it.mask for it in gt.items.values() if it.mask is not None), None)
        spec.palette = mask_palette(first)
    if spec.palette is None:
        spec.palette = default_palette(spec.names)
    return spec
