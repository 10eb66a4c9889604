"""Inference: the Predictor (one checkpoint on arrays of any size) and the predict job over many files.

predictor.py (batching by size, tiling, flip), discover.py (inputs -> items and
their output names), layout.py (every path under --out), job.py (the loop),
outputs.py (mask / overlay / confidence / COCO RLE encoders), reports.py
(predictions.csv / .json, failures.csv from the records).
"""

from .discover import Item, discover, shard_from_env, shown
from .job import JobResult, Palette, PredictJob, PredictOptions
from .layout import OutputLayout
from .predictor import DEFAULT_TILE, DEFAULT_TILE_THRESHOLD, MAX_BATCH_PIXELS, Prediction, Predictor, pick_device

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_THRESHOLD", "MAX_BATCH_PIXELS", "Item", "JobResult", "OutputLayout",
           "Palette", "PredictJob", "PredictOptions", "Prediction", "Predictor", "discover", "pick_device",
           "shard_from_env", "shown"]
