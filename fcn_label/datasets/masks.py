"""A bare folder of index masks: ground truth only (evaluate, predict --gt); images are optional."""

from __future__ import annotations

from pathlib import Path

from .base import mask_folder

NAME = "masks"
GROUND_TRUTH_ONLY = True  # training needs images: this layout is not offered there


def detect(path: Path) -> bool:
    return path.is_dir()


def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    return mask_folder(source, None, images), [], None
