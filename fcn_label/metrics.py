"""The FCN paper's four segmentation metrics (sec. 5, "Metrics").

With n_ij the number of pixels of class i predicted as class j, n_cl classes and
t_i = sum_j n_ij pixels of class i:

* pixel accuracy          sum_i n_ii / sum_i t_i
* mean accuracy           (1/n_cl) sum_i n_ii / t_i
* mean IU                 (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
* frequency weighted IU   (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Everything is computed from an accumulated confusion matrix, so memory stays
flat however many images are evaluated and dataset figures are pooled over
pixels, not averaged over images. A class with no pixels in either the ground
truth or the prediction has an undefined IU (0/0): it is NaN and left out of the
means, so "n_cl" counts only the classes that occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Ground-truth pixels equal to ``ignore_index`` or outside [0, num_classes) are
    excluded. A prediction outside [0, num_classes) at a counted pixel raises
    ValueError rather than landing in a wrong cell; use :func:`count_pixels` to
    get those counts instead.
    """
    c = count_pixels(gt, pred, num_classes, ignore_index)
    if c.bad_pred.any():
        raise ValueError(f"predicted class indices {c.bad_values()} outside 0..{num_classes - 1}")
    return c.conf


@dataclass
class PixelCounts:
    """One pass over a mask pair: the confusion matrix plus what was left out and why."""

    conf: np.ndarray  # (n, n) int64, rows = ground truth
    ignored: int  # ground truth == ignore_index
    gt_out_of_range: int  # ground truth outside [0, n) and not the ignore label
    bad_pred: np.ndarray  # (W,) counts of prediction values >= n (last bin: < 0 or > 255) at counted pixels

    def bad_values(self, limit: int = 5) -> list[int]:
        n = self.conf.shape[0]
        v = [n + int(i) for i in np.nonzero(self.bad_pred)[0]]
        return v[:limit]


_LUTS: dict[tuple[int, int | None], np.ndarray] = {}


def _row_lut(num_classes: int, ignore_index: int | None, width: int) -> np.ndarray:
    key = (num_classes, ignore_index)
    lut = _LUTS.get(key)
    if lut is None:
        rows = np.full(256, num_classes + 1, dtype=np.intp)
        rows[: min(num_classes, 256)] = np.arange(min(num_classes, 256))
        if ignore_index is not None and 0 <= ignore_index < 256:
            rows[ignore_index] = num_classes
        lut = _LUTS[key] = rows * width
    return lut


def count_pixels(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> PixelCounts:
    """Confusion matrix, ignored / out-of-range ground truth and invalid predictions in one bincount.

    Each pixel becomes ``row * W + col``: rows 0..n-1 are counted classes, row n the
    ignore label, row n+1 other out-of-range ground truth; columns are prediction
    values 0..255 (W-1 = anything else). A single ``np.bincount`` then yields all
    of it, several times faster than boolean masking, which matters because
    evaluation is otherwise bound by PNG decoding.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"size mismatch: ground truth {gt.shape[::-1]} vs prediction {pred.shape[::-1]}")
    n = int(num_classes)
    width = max(257, n + 1)
    if gt.dtype == np.uint8:
        idx = _row_lut(n, ignore_index, width)[gt.reshape(-1)]
    else:
        g = gt.reshape(-1).astype(np.int64, copy=False)
        rows = np.where((g >= 0) & (g < n), g, n + 1)
        if ignore_index is not None:
            rows[g == ignore_index] = n
        idx = rows * width
    if pred.dtype == np.uint8:
        idx += pred.reshape(-1)
    else:
        p = pred.reshape(-1).astype(np.int64, copy=False)
        idx += np.where((p >= 0) & (p < width - 1), p, width - 1)
    h = np.bincount(idx, minlength=(n + 2) * width).reshape(n + 2, width)
    return PixelCounts(
        conf=np.ascontiguousarray(h[:n, :n]).astype(np.int64, copy=False),
        ignored=int(h[n].sum()),
        gt_out_of_range=int(h[n + 1].sum()),
        bad_pred=h[:n, n:].sum(axis=0),
    )


@dataclass
class Scores:
    """Dataset-level figures plus per-class arrays (NaN where undefined)."""

    pixel_accuracy: float
    mean_accuracy: float
    mean_iou: float
    fw_iou: float
    iou: np.ndarray
    accuracy: np.ndarray
    precision: np.ndarray
    support: np.ndarray  # t_i: ground-truth pixels per class
    predicted: np.ndarray  # sum_j n_ji: predicted pixels per class

    def summary(self) -> dict[str, float]:
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iou": self.mean_iou,
            "fw_iou": self.fw_iou,
        }


def scores(conf: np.ndarray) -> Scores:
    """The paper's metrics from a confusion matrix (rows = ground truth)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    t = conf.sum(axis=1)
    p = conf.sum(axis=0)
    union = t + p - tp
    total = t.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(t > 0, tp / t, np.nan)
        prec = np.where(p > 0, tp / p, np.nan)
    present = union > 0
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    mean_acc = float(np.nanmean(acc)) if np.any(t > 0) else float("nan")
    mean_iou = float(np.nanmean(iou[present])) if present.any() else float("nan")
    fw = float(np.nansum(t[present] * iou[present]) / total) if total > 0 else float("nan")
    return Scores(pixel_acc, mean_acc, mean_iou, fw, iou, acc, prec, t.astype(np.int64), p.astype(np.int64))
