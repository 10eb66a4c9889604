"""Inference: the Predictor (one checkpoint on arrays of any size) and the predict job over many files.

predictor.py (batching by size, tiling, flip), discover.py (inputs -> items and
their output names), layout.py (every path under --out), options.py (a job's options and
result), job.py (resume, the per-image stages, reports), pipeline.py (one process's loop),
processes.py (how many processes, and what the forked ones run),
outputs.py (mask / overlay / confidence / COCO RLE encoders), reports.py
(predictions.csv / .json, failures.csv from the records).
"""

from .._lazy import lazy_attributes
from .discover import Item, discover, shard_from_env, shown
from .layout import OutputLayout, Palette

_WHERE = {"PredictJob": ".job", **{n: ".options" for n in ("JobResult", "PredictOptions")},
          **{n: ".predictor" for n in ("DEFAULT_TILE", "DEFAULT_TILE_THRESHOLD", "MAX_BATCH_PIXELS", "Prediction",
                                       "Predictor", "pick_device")}}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_THRESHOLD", "MAX_BATCH_PIXELS", "Item", "JobResult", "OutputLayout",
           "Palette", "PredictJob", "PredictOptions", "Prediction", "Predictor", "discover", "pick_device",
           "shard_from_env", "shown"]
