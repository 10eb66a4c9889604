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
    excluded. Predictions must lie in [0, num_classes); callers validate that
    first so an out-of-range prediction is reported rather than silently dropped.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"size mismatch: ground truth {gt.shape[::-1]} vs prediction {pred.shape[::-1]}")
    gt = gt.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    valid = (gt >= 0) & (gt < num_classes)
    if ignore_index is not None:
        valid &= gt != ignore_index
    idx = gt[valid] * num_classes + pred[valid]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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
