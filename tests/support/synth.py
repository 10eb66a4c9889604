"""Tiny synthetic segmentation data and configs shared by the training tests.

Each image is a noisy background with two coloured rectangles; the mask holds
the rectangle classes, so a few optimiser steps measurably reduce the loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fcn_label.train import TrainConfig

COLOURS = np.array([[40, 40, 40], [220, 60, 60], [60, 200, 80], [70, 90, 230], [230, 220, 60]], dtype=np.float64)
H, W = 32, 48


def make_arrays(n: int = 8, classes: int = 3, seed: int = 0, ignore_border: bool = False):
    """``n`` (stem, RGB uint8 image, uint8 mask) triples."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mask = np.zeros((H, W), np.uint8)
        for c in range(1, classes):
            h, w = rng.integers(8, 20), rng.integers(8, 28)
            y, x = rng.integers(0, H - h), rng.integers(0, W - w)
            mask[y : y + h, x : x + w] = c
        img = COLOURS[mask] + rng.normal(0, 12, (H, W, 3))
        if ignore_border:
            mask[0, :] = 255
        out.append((f"img{i:02d}", img.clip(0, 255).astype(np.uint8), mask))
    return out


def write_list_dataset(root: Path, n: int = 8, classes: int = 3, seed: int = 0, name: str = "train",
                       ignore_border: bool = False) -> Path:
    """PNG images + masks and a ``name.txt`` list of 'image mask' lines (CamVid layout)."""
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / f"{name}annot").mkdir(parents=True, exist_ok=True)
    lines = []
    for stem, img, mask in make_arrays(n, classes, seed, ignore_border):
        Image.fromarray(img).save(root / name / f"{stem}.png")
        Image.fromarray(mask, mode="L").save(root / f"{name}annot" / f"{stem}.png")
        lines.append(f"{name}/{stem}.png {name}annot/{stem}.png")
    lst = root / f"{name}.txt"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    """The modern recipe on a model small enough for a few CPU steps per second."""
    cfg = TrainConfig(data=str(data), out=str(out), num_classes=3, seed=0)
    cfg.apply_preset(set())
    base = dict(width=0.0625, fc_channels=16, crop=(32, 48), scale=(0.75, 1.5), batch_size=2, epochs=3,
                warmup_epochs=1, threads=1, cache=True)
    for k, v in (base | kw).items():
        setattr(cfg, k, v)
    return cfg
