"""The worker side of ``predict --engine ray`` (:mod:`.ray_engine` is the driver): what runs on the
cluster's nodes, each a function of one block of rows or an actor, so Ray can retry or restart it
anywhere.

* :func:`header_sizes`: image sizes from the headers the driver cannot read itself (objects, with one
  range request; files only the workers see);
* :func:`decode_blocks`, :class:`Network`, :func:`write_blocks`: the three stages of the GPU pipeline
  (decode tasks, GPU actors, write tasks);
* :class:`WholeActor`: a CPU-only cluster's actor, which decodes, predicts and writes its blocks itself;
* :class:`NetRecipe`: what an actor needs to rebuild the driver's predictor on its own device.

Every stage turns a file's error into an event for the driver; only the driver appends records.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..guard import guarded
from ..images import Blob, image_size
from ..storage import is_url, read_object, shown_url
from .pipeline import infer_failure
from .predictor import Prediction, Predictor
from .sink import Sink
from .stages import Decode, Infer
from .tally import Outcome


@dataclass(frozen=True)
class NetRecipe:
    """What a network actor needs to build the driver's predictor on its own device."""

    checkpoint: object  # an ObjectRef of the Checkpoint: put once by the driver, which keeps it alive
    tile: int | None
    tile_overlap: float
    tile_threshold: int
    channels_last: bool
    flip: bool
    scales: tuple
    amp: bool

    @classmethod
    def of(cls, ray, p: Predictor, amp: bool) -> "NetRecipe":
        if p.backend != "eager":
            raise ConfigError(f"--engine ray runs the eager backend; drop --backend {p.backend}")
        # by reference, put once on the driver's node: an actor that replaces one whose node died must not
        # need arguments stored on that node
        return cls(ray.put(p.checkpoint), p.tile, p.tile_overlap, p.tile_threshold, p.channels_last, p.flip,
                   p.scales, amp)

    def build(self, device: str) -> Predictor:
        import ray

        return Predictor(ray.get(self.checkpoint), device=device, amp=self.amp, tile=self.tile,
                         tile_overlap=self.tile_overlap, tile_threshold=self.tile_threshold,
                         channels_last=self.channels_last, flip=self.flip, scales=self.scales)


# -- the stages (run on the workers) ---------------------------------------------------------------
def _column(values: list) -> np.ndarray:
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


# An object's header is read from its first bytes only (one range request), not the whole file; a
# header beyond them (a JPEG with a large EXIF thumbnail) reads as unknown: that image runs alone.
HEADER_BYTES = 1 << 18


def object_size(path, max_pixels: int) -> tuple[int, int]:
    if is_url(path):
        path = Blob(read_object(path, head=HEADER_BYTES), shown_url(str(path)))
    return image_size(path, max_pixels)


def header_sizes(batch: dict, max_pixels: int) -> dict:
    """(height, width) from each image's header; -1 where the header cannot be read (the decode stage says why)."""
    hs, ws = [], []
    for data in batch["item"]:
        size, _ = guarded("", object_size, pickle.loads(data).path, max_pixels)
        w, h = size if size is not None else (-1, -1)
        hs.append(h)
        ws.append(w)
    return {"k": batch["k"], "h": np.asarray(hs, dtype=np.int64), "w": np.asarray(ws, dtype=np.int64)}


def decode_group(group: list, decode: Decode) -> list:
    """One planned batch's images decoded: ``[(k, item, array | None, reason | None)]``."""
    return [(k, it, *decode(it)) for k, it in group]


def decode_blocks(batch: dict, decode: Decode) -> dict:
    """A block's planned batches decoded (:func:`decode_group`), one pickled row each."""
    return {"g": _column([pickle.dumps(decode_group(pickle.loads(data), decode), protocol=5) for data in batch["g"]])}


class Network:
    """A network actor: the driver's predictor rebuilt on this worker's device, one batch per call."""

    def __init__(self, recipe: NetRecipe, gpu: bool, batch_size: int | None, overlay: bool):
        import torch

        if not gpu:
            torch.set_num_threads(1)  # one actor per CPU: one-thread networks side by side, as the local procs
        self.p = recipe.build("cuda" if gpu else "cpu")
        self.infer = Infer(self.p)
        self.batch_size, self.overlay = batch_size, overlay

    def __call__(self, batch: dict) -> dict:
        return {"g": _column([pickle.dumps(self.run(pickle.loads(data)), protocol=5) for data in batch["g"]])}

    def run(self, decoded: list) -> list:
        """Events: ``("failed", k, stage, reason)`` or
        ``("pred", k, item, image | None, labels, confidence, seconds)``."""
        events, by_shape = [], {}
        for k, it, arr, err in decoded:
            if err is not None:
                events.append(("failed", k, "decode", err))
            else:  # the header's size can differ from the picture's (EXIF rotation): batch by the picture's
                by_shape.setdefault(arr.shape, []).append((k, it, arr))
        for shape, xs in by_shape.items():
            n = 1 if self.p.needs_tiling(shape) else self.p.batch_limit(shape, self.batch_size)
            for j in range(0, len(xs), n):
                chunk = xs[j : j + n]
                t = time.perf_counter()
                try:
                    preds = dict(self.infer([(k, arr) for k, _, arr in chunk]))
                except Exception as e:  # the batch's boundary, as in the local pipeline
                    events.extend(("failed", k, "infer", infer_failure(e)) for k, _, _ in chunk)
                    continue
                per = (time.perf_counter() - t) / len(chunk)
                for k, it, arr in chunk:
                    pred = preds[k]
                    events.append(("pred", k, it, arr if self.overlay else None, pred.labels, pred.confidence, per))
        return events


class WholeActor(Network):
    """A CPU network actor that also decodes its batches and writes their outputs (see the module's
    docstring)."""

    def __init__(self, recipe: NetRecipe, batch_size: int | None, overlay: bool, decode: Decode, sink: Sink):
        super().__init__(recipe, False, batch_size, overlay)
        self.decode, self.sink = decode, sink
        self.held = sink.hold_records()  # the driver appends them

    def block(self, groups: list) -> list:
        """One block of planned batches ``[(k, item)]``: the driver's events of each."""
        return [write_events(self.run(decode_group(g, self.decode)), self.sink, self.held) for g in groups]


def write_events(events: list, sink: Sink, held: list) -> list:
    """Each predicted image's outputs written; events ``("written", k, outcome, message, record | None)``."""
    written = []
    for ev in events:
        if ev[0] != "pred":
            written.append(ev)
            continue
        _, k, it, image, labels, confidence, seconds = ev
        held.clear()
        outcome, message = sink.try_write(it, image, Prediction(labels, confidence), seconds)
        written.append(("written", k, outcome.value, message, held[-1] if outcome is Outcome.DONE else None))
    return written


def write_blocks(batch: dict, sink: Sink) -> dict:
    """A block's predicted images' outputs written (:func:`write_events`), one pickled row per planned batch."""
    held = sink.hold_records()
    return {"g": _column([pickle.dumps(write_events(pickle.loads(data), sink, held), protocol=5)
                          for data in batch["g"]])}


