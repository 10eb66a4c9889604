"""Data layouts, detected in one place and used by finetune, evaluate and predict --gt alike.

A layout is a module with ``NAME``, ``detect(path) -> bool``, ``ground_truth(...)``
(every mask, images optional: what evaluate scores) and, unless it is
ground-truth only, ``pairs(...)`` (image + mask: what training reads).
Adding a layout = adding one module here and one entry in :data:`LAYOUTS`
(first match wins, so more specific layouts come first).
"""

from __future__ import annotations

from pathlib import Path

from ..images import InputError
from . import coco, folders, listfile, masks, voc
from .base import MASK_EXTENSIONS, Pair, files_by_stem
from .coco import CocoRasteriser, decode_segmentation
from .ground_truth import GroundTruth
from .matching import match_keys

LAYOUTS = (coco, listfile, voc, folders, masks)

__all__ = ["LAYOUTS", "MASK_EXTENSIONS", "CocoRasteriser", "GroundTruth", "Pair", "decode_segmentation",
           "detect_layout", "files_by_stem", "layout_module", "load_pairs", "match_keys"]


def layout_module(path: Path, ground_truth: bool = False):
    """The layout module that reads ``path``; ``ground_truth`` also accepts a bare mask folder."""
    path = Path(path)
    for m in LAYOUTS:
        if (ground_truth or not getattr(m, "GROUND_TRUTH_ONLY", False)) and m.detect(path):
            return m
    raise InputError(
        f"{path}: cannot tell the dataset layout; expected a VOC folder (JPEGImages/ + SegmentationClass/), "
        "a folder with images/ + masks/, a list file of 'image mask' lines, or a COCO .json"
    )


def detect_layout(path: Path, ground_truth: bool = False) -> str:
    return layout_module(path, ground_truth).NAME


def load_pairs(source: Path, images: Path | None = None, split: str | None = None,
               ignore_index: int = 255) -> tuple[list[Pair], list[str], CocoRasteriser | None]:
    """Training pairs (image and mask) from any layout, with a message per skipped entry."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: not found; give a VOC folder, images/+masks/ folder, list file or COCO JSON")
    return layout_module(source).pairs(source, images, split, ignore_index)
