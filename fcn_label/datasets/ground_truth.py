"""Ground-truth masks by key, from any layout: what evaluate scores against and predict --gt compares with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, InputError, check_pixels, read_mask
from .base import Pair, files_by_stem
from .matching import match_keys


class GroundTruth:
    """Every ground-truth mask of ``source`` (any layout or a bare mask folder), keyed by relative stem."""

    max_pixels = DEFAULT_MAX_PIXELS  # per mask (evaluate --max-pixels): the decompression-bomb guard, as predict's

    def __init__(self, source: str | Path, images: str | Path | None = None, split: str | None = None,
                 ignore_index: int = 255):
        from . import layout_module

        source = Path(source)
        images = Path(images) if images else None
        self.source = source
        if not source.exists():
            raise InputError(f"{source}: ground truth not found; give a folder of masks, a VOC root, a list file "
                             "of 'image mask' lines or a COCO instances JSON")
        if images is not None and not images.is_dir():
            raise InputError(f"--images {images}: folder not found; check the path")
        module = layout_module(source, ground_truth=True)
        self.layout = module.NAME
        if split and self.layout != "voc":
            raise InputError(f"--split {split}: only applies to a VOC root (JPEGImages/ + SegmentationClass/ + "
                             f"ImageSets/Segmentation/), and {source} is not one; drop --split")
        # coco: the reader of layouts whose masks are decoded from annotations (COCO, Label Studio, CVAT, LabelMe)
        self.items, self.problems, self.coco = module.ground_truth(source, images, split, ignore_index)
        if not self.items:
            raise InputError(f"{source}: no ground-truth masks found ({self.layout} layout); "
                             + ("; ".join(self.problems[:3]) if self.problems else "check the path"))
        if images is not None and self.layout == "list":
            self.attach_images(images)

    def attach_images(self, folder: Path) -> None:
        """Use images from ``folder`` (matched by name) for pictures and --weights."""
        image_files = files_by_stem(folder, IMAGE_EXTENSIONS)
        pairing, _, _ = match_keys(self.items, image_files)
        self.items = {k: Pair(image_files[pairing[k]] if k in pairing else it.image, it.mask, k)
                      for k, it in self.items.items()}

    def class_names(self) -> list[str] | None:
        return list(self.coco.class_names) if self.coco else None

    def first_mask(self) -> Path | None:
        return next((it.mask for it in self.items.values() if it.mask is not None), None)

    def path(self, key: str) -> str:
        it = self.items[key]
        return str(it.mask) if it.mask is not None else f"{self.source}#{self.coco.images[key]['file_name']}"

    def load(self, key: str) -> np.ndarray:
        it = self.items[key]
        if it.mask is not None:
            return read_mask(it.mask, self.max_pixels)
        im = self.coco.images[key]
        h, w = int(im["height"]), int(im["width"])
        check_pixels(self.path(key), w, h, self.max_pixels)
        return self.coco.mask(key, (h, w))
