"""Scoring: the pooled confusion matrix over every matched (ground truth, prediction) pair.

Dataset figures come from one confusion matrix accumulated over every pixel of
every image (see :mod:`fcn_label.metrics`), never from averaging per-image
numbers, so they are the ones published tables report. Masks are decoded by a
few threads (PNG decoding releases the GIL), scored, and dropped at once:
memory holds one small row per image, never the masks. Each pair is read and
checked behind the per-file guard: whatever goes wrong becomes a failure row.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..datasets import GroundTruth, match_keys
from ..guard import guarded
from ..images import InputError
from ..metrics import Scores, count_pixels, scores
from .sources import ERROR, EXTRA, MISSING, Failure, PredictionSource




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

    def failure_rows(self) -> list:
        """failures.csv's rows (path, stage, reason; see :data:`.sources.STAGES`)."""
        return [f.row() for f in self.failures]

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


def evaluate(gt: GroundTruth, pred: PredictionSource, num_classes: int, class_names: Sequence[str] | None = None,
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
    why_missing = pred.missing_reason
    failures += [Failure(MISSING, k, gt.path(k), f"{gt.path(k)}: {why_missing}") for k in missing]
    failures += [Failure(EXTRA, k, pred.path(k), f"{pred.path(k)}: {why}") for k, why in extra]
    jobs = sorted(matched.items())

    def load_and_count(gkey: str, pkey: str):
        g = gt.load(gkey)
        p = pred.load(pkey, g.shape)
        if g.shape != p.shape:
            raise InputError(f"{pred.path(pkey)}: prediction is {p.shape[1]}x{p.shape[0]} but ground truth "
                             f"{gt.path(gkey)} is {g.shape[1]}x{g.shape[0]}; predict at the image's size")
        c = count_pixels(g, p, n, ignore_index)
        if c.bad_pred.any():
            bad = c.bad_values()
            raise InputError(f"{pred.path(pkey)}: {int(c.bad_pred.sum()):,} scored pixels predicted as class "
                             f"{', '.join(map(str, bad))}, outside 0..{n - 1}; check --num-classes or the predictions")
        return gkey, pkey, c, scores(c.conf), g, p

    def score_one(job: tuple[str, str]):
        """The per-file boundary: ground truth, prediction and their checks; any failure is a row."""
        result, err = guarded(pred.path(job[1]), load_and_count, *job)
        return InputError(err) if err is not None else result

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


