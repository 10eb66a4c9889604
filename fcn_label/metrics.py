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
    bad_pred: np.ndarray  # counts of prediction values n, n+1, ... at counted pixels (general path: last = other)

    def bad_values(self, limit: int = 5) -> list[int]:
        n = self.conf.shape[0]
        v = [n + int(i) for i in np.nonzero(self.bad_pred)[0]]
        return v[:limit]


def count_pixels(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> PixelCounts:
    """Confusion matrix, ignored / out-of-range ground truth and invalid predictions in one pass.

    For 8-bit masks each pixel becomes the 16-bit code ``gt << 8 | pred`` and a
    single ``np.bincount`` over 65536 bins is the joint histogram of (gt, pred)
    values, from which everything is sliced: about twice as fast as mapping
    labels through a lookup table first, which matters because evaluation is
    otherwise bound by PNG decoding. Other dtypes take a general path.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"size mismatch: ground truth {gt.shape[::-1]} vs prediction {pred.shape[::-1]}")
    n = int(num_classes)
    if pred.dtype != np.uint8 and pred.size and np.issubdtype(pred.dtype, np.integer) \
            and pred.min() >= 0 and pred.max() <= 255:
        pred = pred.astype(np.uint8)
    if gt.dtype == np.uint8 and pred.dtype == np.uint8 and n <= 256:
        code = gt.astype(np.uint16)
        code <<= 8
        code |= pred
        h = np.bincount(code.reshape(-1), minlength=65536).reshape(256, 256)
        rows = h.sum(axis=1)
        ignored = int(rows[ignore_index]) if ignore_index is not None and 0 <= ignore_index < 256 else 0
        out_of_range = int(rows[n:].sum()) - (ignored if ignore_index is not None and ignore_index >= n else 0)
        conf = h[:n, :n].astype(np.int64)
        bad = h[:n, n:]
        if ignore_index is not None and 0 <= ignore_index < n:  # an ignore label inside the class range
            conf[ignore_index] = 0
            bad = bad.copy()
            bad[ignore_index] = 0
        return PixelCounts(conf, ignored, out_of_range, bad.sum(axis=0))
    # general dtypes: rows 0..n-1 counted, n = ignore, n+1 = other; columns 0..width-2 values, width-1 = other
    width = max(257, n + 1)
    g = gt.reshape(-1).astype(np.int64, copy=False)
    rows = np.where((g >= 0) & (g < n), g, n + 1)
    if ignore_index is not None:
        rows[g == ignore_index] = n
    p = pred.reshape(-1).astype(np.int64, copy=False)
    idx = rows * width + np.where((p >= 0) & (p < width - 1), p, width - 1)
    h = np.bincount(idx, minlength=(n + 2) * width).reshape(n + 2, width)
    return PixelCounts(h[:n, :n].astype(np.int64), int(h[n].sum()), int(h[n + 1].sum()), h[:n, n:].sum(axis=0))


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
