"""Training data: decoded (image, mask) pairs, the label scan that checks them, class weights."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np
import torch

from ..datasets import CocoRasteriser, Pair
from ..guard import guarded
from ..images import InputError, read_image, read_mask
from .augment import Augment


def _named(path, reader):
    """``reader(path)``, any failure raised as an InputError naming ``path``: a pair has two files, and the
    scan's guard (and a training worker's error) must say which of them is broken."""
    value, err = guarded(path, reader, path)
    if err is not None:
        raise InputError(err)
    return value


class SegmentationDataset(torch.utils.data.Dataset):
    """Decoded pairs as (float image in [0, 1], long mask); optionally cached in memory as uint8."""

    def __init__(self, pairs: Sequence[Pair], augment: Augment | None = None, cache: bool = False,
                 coco: "CocoRasteriser | None" = None, seed: int = 0):
        self.pairs = list(pairs)
        self.augment = augment
        self.coco = coco
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        p = self.pairs[i]
        img = _named(p.image, read_image)
        mask = self.coco.mask(p.key, img.shape[:2]) if self.coco else _named(p.mask, read_mask)
        if mask.shape != img.shape[:2]:
            raise InputError(
                f"{p.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {p.image} is "
                f"{img.shape[1]}x{img.shape[0]}; masks must match their images"
            )
        if self.cache:
            self._cache[i] = (img, mask)
        return img, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.load(i)
        t = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        m = torch.from_numpy(mask.astype(np.int64))
        if self.augment is not None:
            # per-(seed, epoch, index) stream: identical under resume and in any worker
            rng = random.Random(hash((self.seed, self.epoch, i)) & 0xFFFFFFFF)
            t, m = self.augment(t, m, rng)
        return t, m


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Eigen & Fergus' median frequency balancing: w_c = median(f) / f_c."""
    f = counts / max(1, counts.sum())
    med = np.median(f[f > 0]) if (f > 0).any() else 1.0
    return np.where(f > 0, med / np.maximum(f, 1e-12), 0.0)


Bad = list[tuple[int, str]]  # (pair index, one-line reason naming the file)


def scan_masks(ds: SegmentationDataset) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]], Bad]:
    """Label histogram (256 bins), ``(index, labels present, histogram)`` per readable pair, and the
    pairs that cannot be used.

    Each pair is read behind the per-file guard, so every broken pair (unreadable,
    bomb, mis-sized, bad COCO entry) is listed before training, not only the first.
    """
    counts = np.zeros(256, dtype=np.int64)
    present, bad = [], []
    for i in range(len(ds)):
        p = ds.pairs[i]
        loaded, err = guarded(p.mask or p.image, ds.load, i)
        if err is not None:
            bad.append((i, err))
            continue
        c = np.bincount(loaded[1].ravel(), minlength=256)
        counts += c
        present.append((i, np.nonzero(c)[0], c))
    return counts, present, bad


def check_labels(ds: SegmentationDataset, present: list, n: int, ignore_index: int) -> Bad:
    """Pairs whose masks hold labels outside ``0..n-1`` and the ignore label."""
    bad = []
    for i, labels, _ in present:
        out = [int(v) for v in labels if v >= n and v != ignore_index]
        if out:
            p = ds.pairs[i]
            bad.append((i, f"{p.mask or p.image}: mask values {out[:5]} outside classes 0..{n - 1} and ignore "
                           f"{ignore_index}; fix the mask or set --num-classes / --ignore-index / --classes"))
    return bad


def drop_bad(splits: Sequence[tuple[str, SegmentationDataset | None, Bad]], skip_bad: bool,
             log: Callable[[str], None]) -> None:
    """List every bad pair of every split; stop with one line, or (``skip_bad``) leave them out and say how many."""
    bad = [(name, ds, b) for name, ds, b in splits if ds is not None and b]
    if not bad:
        return
    total = sum(len(b) for _, _, b in bad)
    for _, _, b in bad:
        for _, msg in sorted(b):
            log(f"bad pair: {msg}")
    if not skip_bad:
        first = bad[0][2][0][1]
        raise InputError((first if total == 1 else f"{total} pairs cannot be used (listed above)")
                         + "; fix or remove them, or set skip_bad = true (--set skip_bad=true) to train on the others")
    for name, ds, b in bad:
        drop = {i for i, _ in b}
        keep = [i for i in range(len(ds)) if i not in drop]
        if not keep:
            raise InputError(f"skip_bad: every one of the {len(ds)} {name} pairs is bad (listed above); "
                             "nothing is left to train on")
        ds._cache = {new: ds._cache[old] for new, old in enumerate(keep) if old in ds._cache}  # indices shift
        ds.pairs = [ds.pairs[i] for i in keep]
        log(f"skip_bad: left out {len(drop)} of {len(keep) + len(drop)} {name} pairs; using the other {len(keep)}")
