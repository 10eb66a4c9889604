"""Inference: preprocess -> forward -> postprocess, batched by size, tiled when large.

Images are only batched with others of exactly the same size: padding a
smaller image up to a batch's size would change the network's view of its
border and so its labels. Batched and one-at-a-time results therefore agree.

Large images run as overlapping tiles whose class probabilities are averaged
(as in mmsegmentation's slide inference). Probabilities are accumulated one
band of tile rows at a time, so memory grows with the image's width, not its
area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..devices import pick_device  # noqa: F401  (fcn_label.predict.pick_device)
from ..errors import ConfigError, InputError
from ..model import FCN

DEFAULT_TILE = 1024
DEFAULT_TILE_THRESHOLD = 2_000_000  # pixels; above this an image is tiled
# A batch holds at most this many pixels (4 tiles' worth), whatever --batch-size says: eight
# 2-megapixel images in one forward pass would need ~2 GB of activations even for the compact
# model, and large images gain nothing from batching.
MAX_BATCH_PIXELS = 4 * DEFAULT_TILE * DEFAULT_TILE
# The CPU's default batch (no --batch-size): same-size images up to this many pixels, at most
# CPU_MAX_BATCH of them. Small images gain a lot from sharing a forward pass, while a frame-sized
# image gains nothing from a second one and loses from a third (benchmarks/tiny_images.py).
CPU_BATCH_PIXELS = 300_000
CPU_MAX_BATCH = 32


def default_batch_size_on(device_type: str) -> int:
    """:attr:`Predictor.default_batch_size` on a device of this type ("cpu", "cuda")."""
    return 1 if device_type == "cpu" else 8


def batch_limit_on(device_type: str, shape: tuple[int, ...], batch_size: int | None = None) -> int:
    """:meth:`Predictor.batch_limit` on a device of this type: a Ray driver plans the batches of workers
    whose device it does not have."""
    px = max(1, shape[0] * shape[1])
    if batch_size is None and device_type == "cpu":
        return max(1, min(CPU_MAX_BATCH, CPU_BATCH_PIXELS // px))
    return max(1, min(batch_size or default_batch_size_on(device_type), MAX_BATCH_PIXELS // px))


# Longest side / shortest side beyond which an image is refused. The network pads a thin side to
# 32 rows (or by 100 px, Caffe padding), so a 4 x 1,000,000 strip costs 8-50x its pixels whatever the
# tiling; no camera or scanner a segmentation model is trained for makes such an image.
MAX_ASPECT = 1000


def check_aspect(path: object, shape: tuple[int, ...]) -> None:
    """Refuse an absurdly thin image with one line (before any forward pass)."""
    h, w = shape[:2]
    if max(h, w) > MAX_ASPECT * max(1, min(h, w)):
        raise InputError(f"{path}: {w}x{h} pixels is thinner than 1:{MAX_ASPECT}; crop or split it into "
                         "pieces of a sensible shape")


def image_source(path):
    """What the image readers take for an input: a local path as it is, or a remote input's bytes
    fetched through the store (an :class:`~fcn_label.images.Blob` named by its URL). Fetching is part of
    the per-file step, so a vanished or unreadable object is that file's failure row."""
    from ..images import Blob
    from ..storage import is_url, read_object, shown_url

    if isinstance(path, Blob) or not is_url(path):
        return path
    return Blob(read_object(path), shown_url(str(path)))


def read_for_model(path, max_pixels: int) -> np.ndarray:
    """The RGB array of ``path`` (a local path, a URL, or fetched bytes) if a model can label it
    (decoded safely, not absurdly thin)."""
    from ..images import read_image

    arr = read_image(image_source(path), max_pixels)
    check_aspect(path, arr.shape)
    return arr

@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) uint8 class indices
    confidence: np.ndarray  # (H, W) float32, probability of the chosen class


def labels_and_confidence(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float32 logits -> the label of each pixel (the first highest score, as argmax picks)
    and the softmax probability of that class, 1 / sum_c exp(s_c - max_c s_c).

    One class plane at a time in NumPy: a fraction of the time of torch's softmax then max, and
    without its probability tensor (agrees with it to float32 rounding; benchmarks/host_profile.py)."""
    n = scores.shape[0]
    best = scores[0].copy()
    labels = np.zeros(scores.shape[1:], dtype=np.uint8 if n <= 256 else np.int32)
    for c in range(1, n):
        plane = scores[c]
        labels[plane > best] = c
        np.maximum(best, plane, out=best)
    total = np.zeros_like(best)
    tmp = np.empty_like(best)
    for c in range(n):
        np.subtract(scores[c], best, out=tmp)
        total += np.exp(tmp, out=tmp)
    return labels, np.reciprocal(total, out=total)


class Predictor:
    """Runs one checkpoint on RGB uint8 arrays of any size.

    ``flip`` averages the class probabilities of the image and of its mirror image
    (test-time augmentation): twice the compute for a steadier label map. ``scales`` adds
    multi-scale averaging: the network also sees the image resized by each factor, and the
    probabilities, resized back, are averaged (with ``flip``, at every scale); each scale costs
    about its factor squared in compute. Gains and costs are measured in the docs.
    ``channels_last`` (default) lays feature maps out as NHWC, which oneDNN's CPU
    convolutions and cuDNN's tensor-core kernels both prefer (benchmarks/predict_speed.py).
    ``backend`` (:data:`.backends.KINDS`): ``eager`` is the exact float32 path; the others are
    opt-in CPU backends with other numerics (accuracy in the docs' Performance page), built once
    here; ort-int8 calibrates on ``calib`` (RGB uint8 arrays). ``workdir``: where their build's
    temporary files go (predict passes a folder inside --out).
    """

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "auto", amp: bool = False,
                 tile: int | None = None, tile_overlap: float = 0.25,
                 tile_threshold: int = DEFAULT_TILE_THRESHOLD, channels_last: bool = True, flip: bool = False,
                 scales: Sequence[float] = (1.0,), backend: str = "eager", calib: Sequence[np.ndarray] = (), workdir: str | Path | None = None):
        self.checkpoint = checkpoint
        if device == "auto" and getattr(backend, "value", backend) != "eager":
            device = "cpu"  # the opt-in backends are CPU backends
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        # inference only: BN folded into the convolutions
        self.model: FCN = checkpoint.build(self.device).fold_batch_norm()
        self.amp = amp and self.device.type == "cuda"
        self.flip = flip
        self.scales = tuple(float(s) for s in scales) or (1.0,)
        if min(self.scales) <= 0:
            raise ConfigError(f"test-time scales must be positive, got {', '.join(map(str, self.scales))}")
        self.tile = tile
        if not 0 <= tile_overlap < 1:
            raise ConfigError(f"tile overlap must be in [0, 1), got {tile_overlap}")
        self.tile_overlap = tile_overlap
        self.tile_threshold = tile_threshold
        self.norm = checkpoint.normalization
        self.num_classes = checkpoint.config.num_classes
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._lut = None  # preprocess's per-channel table, made on first use
        self.backend = getattr(backend, "value", backend)
        self.net = None  # the opt-in backend's callable; None: self.model, exact float32
        if self.backend != "eager":
            self.net = self._build_backend(self.backend, calib, workdir)

    def _build_backend(self, kind: str, calib: Sequence[np.ndarray], workdir):
        """An opt-in CPU backend (:mod:`.backends`); ``calib``: RGB uint8 arrays for the int8 kinds."""
        from . import backends

        if kind not in backends.KINDS:
            raise ConfigError(f"unknown backend {kind!r}; choose one of {', '.join(backends.KINDS)}")
        if self.device.type != "cpu":
            raise ConfigError(f"--backend {kind} runs on the CPU only; add --device cpu, or use --backend eager "
                              f"(with --amp on CUDA)")
        xs = []
        if kind in backends.CALIBRATED:
            if not calib:
                raise ConfigError(f"--backend {kind} needs calibration images (--calib, or the job's own images)")
            xs = [self.preprocess([a]) for a in calib]
        return backends.make_backend(self.checkpoint.build(torch.device("cpu")), kind, xs, workdir=workdir)

    # -- the three stages -----------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Same-size RGB uint8 images -> normalised (N, 3, H, W) float on the device.

        ``images``: (H, W, 3) arrays, or tensors (decoded on the device by --gpu-jpeg), or both: a
        Pillow-decoded image (a PNG, a CMYK JPEG) can share a batch with device-decoded ones."""
        if any(isinstance(t, torch.Tensor) for t in images):  # normalised on the device, where they are
            x = torch.stack([torch.as_tensor(t).to(self.device) for t in images])
            x = self.norm.apply(x.permute(0, 3, 1, 2))
        elif self.device.type == "cpu":
            x = torch.from_numpy(self._normalised(images)).permute(0, 3, 1, 2)
        else:  # normalised on the GPU: a quarter of the bytes cross the bus
            # stacked straight into page-locked memory, so the copy is a DMA that does not hold up this
            # thread (non_blocking from pageable memory is a synchronous copy through a staging buffer);
            # the caching host allocator keeps the buffer alive until the copy has run
            batch = torch.empty((len(images),) + tuple(images[0].shape), dtype=torch.uint8,
                                pin_memory=self.device.type == "cuda")
            np.stack(images, out=batch.numpy())
            x = self.norm.apply(batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _normalised(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) float32 in one pass: a per-channel table of the 256 values Normalization.apply
        gives, so every float is the one apply computes (same float32 operations, no rounding change),
        without its four full-size temporaries."""
        if self._lut is None:
            v = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 3, 256, 1)
            self._lut = self.norm.apply(v).reshape(3, 256).numpy()  # [output channel, input value]
        src = (2, 1, 0) if self.norm.bgr else (0, 1, 2)  # the input channel each output channel reads
        out = np.empty((len(images),) + images[0].shape, dtype=np.float32)
        for n, img in enumerate(images):
            for k in range(3):
                np.take(self._lut[k], img[..., src[k]], out=out[n, ..., k])
        return out

    @torch.inference_mode()
    def predict_batch(self, x: torch.Tensor) -> list[Prediction]:
        """A preprocessed batch -> one :class:`Prediction` per image.

        On the CPU without --flip the labels and confidences come from the logits directly
        (:func:`labels_and_confidence`): no probability tensor is made, and torch's softmax over the
        class axis, which runs far slower in a forked inference process, is not needed. On a GPU the
        softmax and max stay there, so only labels and confidences cross the bus."""
        if self.flip or self.scales != (1.0,) or self.device.type != "cpu":
            return self.postprocess(self.forward(x))
        logits = self.logits(x).float().cpu().contiguous()
        return [Prediction(*labels_and_confidence(s.numpy())) for s in logits]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's class scores (N, C, H, W), before the softmax."""
        if self.net is not None:
            return self.net(x)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.model(x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C, H, W), float32: averaged over ``scales`` and, with ``flip``, mirrors."""
        size = tuple(x.shape[-2:])
        total, views = None, 0
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                  recompute_scale_factor=False)
            probs = torch.softmax(self.logits(xs).float(), dim=1)
            if self.flip:
                probs = probs + torch.softmax(self.logits(xs.flip(-1)).float(), dim=1).flip(-1)
            if s != 1.0:
                probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            views += 2 if self.flip else 1
        return total / views if views > 1 else total

    @staticmethod
    def postprocess(probs: torch.Tensor) -> list[Prediction]:
        conf, labels = probs.max(dim=1)
        labels = labels.to(torch.uint8) if probs.shape[1] <= 256 else labels.to(torch.int32)
        return [Prediction(l.cpu().numpy(), c.cpu().numpy()) for l, c in zip(labels, conf)]

    @property
    def default_batch_size(self) -> int:
        """8 on a GPU; 1 on the CPU for a frame-sized image, where bigger batches run slower (cache-bound;
        benchmarks/predict_speed.py --batch-size shows it). Small
        images are batched on the CPU all the same: see :meth:`batch_limit`."""
        return default_batch_size_on(self.device.type)

    # -- entry points ----------------------------------------------------------
    def batch_limit(self, shape: tuple[int, ...], batch_size: int | None = None) -> int:
        """How many images of this size share one forward pass: ``batch_size``, fewer when they are large;
        without one, on the CPU, as many as fit in :data:`CPU_BATCH_PIXELS` (1 for a 480x360 frame)."""
        return batch_limit_on(self.device.type, shape, batch_size)

    def needs_tiling(self, shape: tuple[int, ...]) -> bool:
        h, w = shape[:2]
        if self.tile:
            return h > self.tile or w > self.tile
        return h * w > self.tile_threshold

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Prediction]:
        """Predict a list of images; same-size ones share a batch, large ones are tiled."""
        out: list[Prediction | None] = [None] * len(images)
        for idx, preds in self.predict_groups(list(enumerate(images)), batch_size):
            out[idx] = preds
        return out  # type: ignore[return-value]

    def predict_groups(self, items: Iterable[tuple[object, np.ndarray]], batch_size: int | None = None):
        """Yield ``(key, Prediction)``, batching consecutive same-size items up to :meth:`batch_limit`."""
        pending: list[tuple[object, np.ndarray]] = []

        def flush():
            if pending:
                preds = self.predict_batch(self.preprocess([a for _, a in pending]))
                yield from zip((k for k, _ in pending), preds)
                pending.clear()

        for key, arr in items:
            if self.needs_tiling(arr.shape):
                yield from flush()
                yield key, self.predict_tiled(arr)
                continue
            if pending and (pending[0][1].shape != arr.shape or len(pending) >= self.batch_limit(arr.shape, batch_size)):
                yield from flush()
            pending.append((key, arr))
        yield from flush()

    def tile_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(rows, cols)`` of one tile: square, except that a side shorter than the tile gives its
        unused length to the other side (same pixels per tile, so the same memory).

        A 4 x 1,000,000 strip in square 1024 tiles would take about a thousand forward passes of
        4 x 1024 pixels; as 4 x 262,144 tiles it takes 5.
        """
        t = self.tile or DEFAULT_TILE
        if h < t <= w:
            return h, min(w, max(t, t * t // max(1, h)))
        if w < t <= h:
            return min(h, max(t, t * t // max(1, w))), w
        return t, t

    def tile_grid(self, h: int, w: int) -> tuple[tuple[int, int], list[int], list[int]]:
        """The tile shape and the top / left offsets of the overlapping tiles covering an ``h`` x ``w`` image."""
        th, tw = self.tile_shape(h, w)

        def starts(n: int, t: int) -> list[int]:
            if n <= t:
                return [0]
            stride = max(1, int(t * (1 - self.tile_overlap)))
            k = math.ceil((n - t) / stride) + 1
            return sorted({min(i * stride, n - t) for i in range(k)})

        return (th, tw), starts(h, th), starts(w, tw)

    @torch.inference_mode()
    def predict_tiled(self, image: np.ndarray) -> Prediction:
        """Slide overlapping windows; average probabilities; finish rows band by band.

        One preallocated accumulator holds a single band of tile rows (classes x tile x
        width); rows no later tile touches are finished in column chunks and the overlap
        moved up, so no band-sized temporary is ever made and memory grows with the
        image's width, not its area.
        """
        H, W = image.shape[:2]
        (t_rows, t_cols), ys, xs = self.tile_grid(H, W)
        C = self.num_classes
        labels = np.empty((H, W), dtype=np.uint8 if C <= 256 else np.int32)
        conf = np.empty((H, W), dtype=np.float32)
        rows = min(t_rows, H)
        acc = torch.zeros((C, rows, W), dtype=torch.float32)  # summed probabilities of rows [y, y + rows)
        cnt = torch.zeros((rows, W), dtype=torch.float32)
        chunk = max(1, (self.tile or DEFAULT_TILE) ** 2 // rows)  # column chunks of about one tile's pixels
        for k, y in enumerate(ys):
            th = min(t_rows, H - y)
            for x in xs:
                tw = min(t_cols, W - x)
                tile = np.ascontiguousarray(image[y : y + th, x : x + tw])
                acc[:, :th, x : x + tw] += self.forward(self.preprocess([tile]))[0].cpu()
                cnt[:th, x : x + tw] += 1
            # rows above the next tile row are final; the overlap moves to the top of the band
            n = (ys[k + 1] if k + 1 < len(ys) else H) - y
            keep = th - n
            for x0 in range(0, W, chunk):
                x1 = min(W, x0 + chunk)
                c, l = (acc[:, :n, x0:x1] / cnt[:n, x0:x1].clamp_min(1)).max(dim=0)
                labels[y : y + n, x0:x1] = l.numpy().astype(labels.dtype)
                conf[y : y + n, x0:x1] = c.numpy()
                if keep > 0:
                    acc[:, :keep, x0:x1] = acc[:, n:th, x0:x1].clone()
                    cnt[:keep, x0:x1] = cnt[n:th, x0:x1].clone()
            acc[:, keep:].zero_()
            cnt[keep:].zero_()
        return Prediction(labels, conf)
