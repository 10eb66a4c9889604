"""One process's predict pipeline: decoding workers -> a window of images by size -> the network ->
writer threads or encoding processes, with their bounded queues.

It is handed the run's :class:`Parts` and a :class:`.tally.Tally`; the runners
(:mod:`.runners`) run one in this process, or one in each forked inference process.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from ..guard import first_line
from .decoding import (TRIM_EVERY_PIXELS, WORKER_MAX_PIXELS, JpegBytes, collate_one, DecodeDataset, as_array, decode_jpegs,
                       release_free_memory)
from .discover import Item
from .encoders import encode, encoding_pool
from .options import PredictOptions
from .parallel import can_fork, default_encoders, default_workers
from .predictor import CPU_BATCH_PIXELS, CPU_MAX_BATCH, MAX_BATCH_PIXELS
from .sink import Sink
from .stages import Decode, Infer
from .tally import Tally


def infer_failure(e: BaseException) -> str:
    """The failure row's reason for each image of a batch the network failed on."""
    return f"inference failed ({type(e).__name__}: {first_line(e)}); try --tile 512 or a smaller --batch-size"


@dataclass(frozen=True)
class Parts:
    """What a runner is handed: the stages, the sink and the options of one predict run."""

    decode: Decode
    infer: Infer
    sink: Sink
    options: PredictOptions

    def one_process(self) -> "Parts":
        """These parts for a forked inference process: decoding and writing in its own threads."""
        return replace(self, options=replace(self.options, workers=0, encoders=0, procs=1))


class Pipeline:
    """Predict ``todo`` in this process, counting into ``tally``; :meth:`run` once."""

    def __init__(self, parts: Parts, todo: list[Item], tally: Tally):
        self.parts, self.todo, self.tally = parts, todo, tally
        p, o = parts.infer.predictor, parts.options
        self.predictor = p
        self.workers = default_workers(p.device) if o.workers is None else max(0, o.workers)
        self.bs = max(1, o.batch_size or p.default_batch_size)  # sizes the queues
        # bound the decoded images waiting in the window: 4 batches' worth, in pixels as well as count
        cpu_auto = o.batch_size is None and p.device.type == "cpu"
        self.wait_n = 4 * (CPU_MAX_BATCH if cpu_auto else self.bs)
        self.wait_px = 4 * (CPU_BATCH_PIXELS if cpu_auto else MAX_BATCH_PIXELS)
        self.jpeg_device = None if o.jpeg_device is None else torch.device(o.jpeg_device)
        self.encoders = default_encoders() if o.encoders is None else max(0, o.encoders)
        if self.encoders and not can_fork():
            self.encoders = 0  # Windows: no fork, and the sink is not picklable for spawn; threads as before
        self.images: dict[int, object] = {}  # decoded, waiting for the network: arrays, or device tensors
        self.window: dict[tuple, list[int]] = {}  # same-size images waiting to form a batch, by shape
        self.jpegs: list[tuple[int, JpegBytes]] = []  # read by the workers, waiting to be decoded together
        self.inflight: list[tuple[Item, Future]] = []
        self.since_trim = 0
        self.pool = None
        self.writer = None  # the thread pool or the encoding pool (self.pool), made by run()

    def run(self) -> None:
        tally, parts = self.tally, self.parts
        parts.sink.stop_message = ""
        dataset = DecodeDataset(self.todo, parts.decode.max_pixels, WORKER_MAX_PIXELS,
                          jpeg_bytes=self.jpeg_device is not None)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, collate_fn=collate_one, num_workers=self.workers,
            prefetch_factor=max(2, self.bs) if self.workers else None, shuffle=False,
        )
        if self.encoders:
            self.writer = self.pool = encoding_pool(parts.sink, self.encoders)
        else:
            self.writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcn-label-writer")
        try:
            for i, arr, err in loader:
                if tally.stopped:
                    break
                if isinstance(arr, JpegBytes):
                    self.jpegs.append((i, arr))
                    if len(self.jpegs) >= self.bs:
                        self.decode_jpeg_batch()
                    continue
                if arr is None and err is None:  # a large image the worker left to us
                    self.drain()
                    arr, err = parts.decode(self.todo[i])
                self.admit(i, arr, err)
            if self.jpegs and not tally.stopped:
                self.decode_jpeg_batch()
            for key in list(self.window):
                self.run_group(self.window.pop(key))
            self.drain()
        finally:
            self.writer.shutdown(wait=True)

    def decode_jpeg_batch(self) -> None:
        """The waiting JPEGs in one decode call on the device; if it fails, Pillow decodes each
        (so a file the device decoder refuses gets Pillow's verdict and message, and nothing else is lost)."""
        batch, self.jpegs = self.jpegs, []
        try:
            decoded = decode_jpegs([b for _, b in batch], self.jpeg_device)
        except Exception:  # noqa: BLE001 - any decoder error: the per-file path below decides
            decoded = None
        for k, (i, _) in enumerate(batch):
            self.admit(i, *((decoded[k], None) if decoded is not None else self.parts.decode(self.todo[i])))

    def admit(self, i: int, arr, err: str | None) -> None:
        """A decoded image joins the window of its size (or fails, or runs tiled at once)."""
        if err is not None:
            self.tally.fail(str(self.todo[i].path), "decode", err)
            return
        if self.predictor.needs_tiling(arr.shape):
            self.drain()
            self.images[i] = as_array(arr)  # tiles run from host memory, a band at a time
            self.run_group([i])
            return
        self.images[i] = arr
        key = tuple(arr.shape)
        self.window.setdefault(key, []).append(i)
        if len(self.window[key]) >= self.predictor.batch_limit(key, self.parts.options.batch_size):
            self.run_group(self.window.pop(key))
            return
        waiting = sum(len(v) for v in self.window.values())
        waiting_px = sum(len(v) * k[0] * k[1] for k, v in self.window.items())
        if waiting >= self.wait_n or waiting_px >= self.wait_px:
            # many sizes in flight: run the fullest group to bound memory
            self.run_group(self.window.pop(max(self.window, key=lambda k: len(self.window[k]))))

    def run_group(self, idxs: list[int]) -> None:
        """One batch through the network, then to the writers; the batch is one failure boundary."""
        parts, images = self.parts, self.images
        overlay = parts.options.overlay
        if self.tally.stopped:  # --out cannot take more: predicting would only waste time
            for i in idxs:
                images.pop(i, None)
            return
        t = time.perf_counter()
        try:
            preds = parts.infer([(i, images[i]) for i in idxs])
        except Exception as e:  # the batch's boundary: out of memory on one size, or anything else
            for i in idxs:
                self.tally.fail(str(self.todo[i].path), "infer", infer_failure(e))
                images.pop(i, None)
            return
        per = (time.perf_counter() - t) / max(1, len(idxs))
        self.since_trim += sum(images[i].shape[0] * images[i].shape[1] for i in idxs)
        if self.since_trim >= TRIM_EVERY_PIXELS:
            self.since_trim = 0
            release_free_memory()
        for i, pred in preds:
            img = images.pop(i)
            if isinstance(img, torch.Tensor):  # decoded on the device: only --overlay needs the pixels
                img = as_array(img) if overlay else None
            it = self.todo[i]
            if self.pool is not None:
                f = self.pool.submit(encode, it, img if overlay else None, pred.labels, pred.confidence, per)
            else:
                f = self.writer.submit(parts.sink.try_write, it, img, pred, per)
            self.inflight.append((it, f))
        while len(self.inflight) > 2 * max(self.bs, len(idxs)) + 2 * self.encoders:  # two batches in writing
            self.settle_first()

    def settle_first(self) -> None:
        it, f = self.inflight.pop(0)
        self.tally.settle(str(it.path), *f.result())

    def drain(self) -> None:
        """Wait for pending writes: before a large image, so two large images are never held at once."""
        while self.inflight:
            self.settle_first()
