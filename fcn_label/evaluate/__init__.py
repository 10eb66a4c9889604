"""Scoring predicted masks against ground truth with the FCN paper's metrics.

sources.py (ground truth from :mod:`fcn_label.datasets`; PNG folder, COCO JSON
and on-the-fly model predictions behind one Protocol), score.py (the pooled
confusion matrix, per-file failures), report.py (CSV / PNG).

Matching: ground truth and predictions are paired by relative path without
suffix, then by unambiguous trailing parts (:func:`fcn_label.datasets.match_keys`).
"""

from __future__ import annotations

from pathlib import Path

from ..classes import (ClassSpec, choose_classes, class_file_beside, dataset_categories, explicit_classes,
                       prediction_categories, resolve_palette, voc_classes)
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
    """The classes evaluate scores: --classes / --num-classes / the predicting model, else what the ground truth
    (its categories, a classes.txt beside it, a VOC layout) or the prediction JSON names."""
    explicit = explicit_classes(num_classes, classes_file=classes_file, checkpoint=checkpoint)
    where = gt.source if gt else None
    candidates = [prediction_categories(pred)]
    if gt is not None:
        candidates[:0] = [dataset_categories(gt.class_names(), where), class_file_beside(where),
                          voc_classes(gt.layout, where, num_classes)]
    spec = choose_classes(explicit, candidates, num_classes=num_classes)
    return resolve_palette(spec, first_mask=gt.first_mask() if gt else None)
