"""Scoring predicted masks against ground truth with the FCN paper's metrics.

sources.py (ground truth from :mod:`fcn_label.datasets`; PNG folder, COCO JSON
and on-the-fly model predictions behind one Protocol), score.py (the pooled
confusion matrix, per-file failures), report.py (CSV / PNG).

Matching: ground truth and predictions are paired by relative path without
suffix, then by unambiguous trailing parts (:func:`fcn_label.datasets.match_keys`).
"""

from __future__ import annotations

from pathlib import Path

from ..classes import ClassSpec
from ..classes import resolve_classes as _resolve
from ..datasets import GroundTruth, match_keys
from .report import colourise, render_confusion, render_worst, write_report
from .score import EvalResult, WorstImage, evaluate
from .sources import (ERROR, EXTRA, MISSING, CocoPredictions, Failure, ModelPredictions, PngPredictions,
                      PredictionSource, category_map, open_predictions)

__all__ = ["ERROR", "EXTRA", "MISSING", "ClassSpec", "CocoPredictions", "EvalResult", "Failure", "GroundTruth",
           "ModelPredictions", "PngPredictions", "PredictionSource", "WorstImage", "category_map", "colourise",
           "evaluate", "match_keys", "open_predictions", "render_confusion", "render_worst", "resolve_classes",
           "write_report"]


def resolve_classes(num_classes: int | None = None, classes_file: str | Path | None = None, checkpoint=None,
                    gt: GroundTruth | None = None, pred: str | Path | None = None) -> ClassSpec:
    """:func:`fcn_label.classes.resolve_classes` with what a ground truth tells about its classes."""
    return _resolve(num_classes, classes_file, checkpoint, dataset=gt.source if gt else None,
                    layout=gt.layout if gt else None, dataset_names=gt.class_names() if gt else None,
                    first_mask=gt.first_mask() if gt else None, pred=pred)
