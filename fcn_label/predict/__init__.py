"""Inference: the Predictor (one checkpoint on arrays of any size) and the predict job on paths.

predictor.py (batching by size, tiling, flip), discover.py (inputs -> items and their output
names), options.py (a job's options and result), job.py (orchestration: --out, shard, resume,
runner, reports), and the parts it hands a runner: stages.py (decode, infer), sink.py (outputs
and records), tally.py (counts, failures, progress), pipeline.py (one process's loop),
runners.py (this process, or forked inference processes), encoders.py (forked output writers),
parallel.py (how many processes). What predict writes is :mod:`fcn_label.predfolder`'s format.
"""

from .._lazy import lazy_attributes
from ..predfolder.layout import OutputLayout, Palette
from ..predfolder.records import shown
from .discover import Item, discover, shard_from_env

_WHERE = {"PredictJob": ".job", **{n: ".options" for n in ("JobResult", "PredictOptions")},
          **{n: ".predictor" for n in ("DEFAULT_TILE", "DEFAULT_TILE_THRESHOLD", "MAX_BATCH_PIXELS", "Prediction",
                                       "Predictor", "pick_device")}}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_THRESHOLD", "MAX_BATCH_PIXELS", "Item", "JobResult", "OutputLayout",
           "Palette", "PredictJob", "PredictOptions", "Prediction", "Predictor", "discover", "pick_device",
           "shard_from_env", "shown"]
