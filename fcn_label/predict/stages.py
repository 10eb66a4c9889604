"""The two stages before the sink: decode (file -> RGB array) and infer (same-size arrays -> predictions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..guard import guarded
from .discover import Item
from .predictor import Prediction, Predictor, read_for_model


@dataclass(frozen=True)
class Decode:
    """File -> RGB array behind the per-file guard; never raises."""

    max_pixels: int

    def __call__(self, it: Item) -> tuple[np.ndarray | None, str | None]:
        """``(array, None)`` or ``(None, the one-line reason it cannot be used)``."""
        return guarded(it.path, read_for_model, it.path, self.max_pixels)


@dataclass(frozen=True)
class Infer:
    """One batch the pipeline formed through the network: same-size arrays within the predictor's
    batch limit, or a single image to tile (the pipeline's window is the only batching by size)."""

    predictor: Predictor

    def __call__(self, arrays: list[tuple[int, np.ndarray]]) -> list[tuple[int, Prediction]]:
        """``(key, Prediction)`` for each ``(key, array)``; raises when the batch fails (a failure boundary)."""
        p = self.predictor
        keys, batch = [k for k, _ in arrays], [a for _, a in arrays]
        if len(batch) == 1 and p.needs_tiling(batch[0].shape):
            return [(keys[0], p.predict_tiled(batch[0]))]
        return list(zip(keys, p.predict_batch(p.preprocess(batch))))
