"""Training data: decoded (image, mask) pairs, the label scan that checks them, class weights."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch

from ..datasets import CocoRasteriser, Pair
from ..guard import guarded
from ..images import InputError, read_image, read_mask
from .augment import Augment


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
        img = read_image(p.image)
        mask = self.coco.mask(p.key, img.shape[:2]) if self.coco else read_mask(p.mask)
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


def scan_masks(ds: SegmentationDataset) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Label histogram (256 bins) and the labels present in each mask.

    Each pair is read behind the per-file guard: an unreadable, mis-sized or
    otherwise broken pair is an error naming the file (and how many more), not a traceback.
    """
    counts = np.zeros(256, dtype=np.int64)
    present, bad = [], []
    for i in range(len(ds)):
        p = ds.pairs[i]
        loaded, err = guarded(p.mask or p.image, ds.load, i)
        if err is not None:
            bad.append(err)
            continue
        c = np.bincount(loaded[1].ravel(), minlength=256)
        counts += c
        present.append((i, np.nonzero(c)[0]))
    if bad:
        raise InputError(bad[0] + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""))
    return counts, present


def check_labels(ds: SegmentationDataset, present: list, n: int, ignore_index: int) -> None:
    bad = []
    for i, labels in present:
        out = [int(v) for v in labels if v >= n and v != ignore_index]
        if out:
            p = ds.pairs[i]
            bad.append(f"{p.mask or p.image}: mask values {out[:5]} outside classes 0..{n - 1} and ignore "
                       f"{ignore_index}; fix the mask or set --num-classes / --ignore-index / --classes")
    if bad:
        raise InputError(bad[0] + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""))
