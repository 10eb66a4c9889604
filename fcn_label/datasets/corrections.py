"""What the annotation-tool layouts (Label Studio, CVAT, LabelMe) share: masks by key, class names from the file.

:class:`Corrections` offers what :class:`~fcn_label.datasets.coco.CocoRasteriser` offers
(``class_names``, ``images``, ``cat_to_class``, ``mask(key, shape)``, ``pairs(image_root)``),
so training (:class:`~fcn_label.train.data.SegmentationDataset`) and
:class:`~fcn_label.datasets.ground_truth.GroundTruth` use it without knowing the format.
Each layout module reads its file into one and exposes it through :func:`layout_functions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..images import IMAGE_EXTENSIONS
from .base import Pair


@dataclass
class Entry:
    key: str  # relative name without suffix, used for matching
    image: Path | None  # the photo when the file says where it is and it exists
    height: int
    width: int
    load: Callable[[], np.ndarray]  # (H, W) uint8 class indices; unlabelled pixels = ignore index
    where: str  # file (and field) to name in messages
    image_ref: str = ""  # the image reference as written in the file


@dataclass
class Corrections:
    layout: str
    source: Path
    class_names: list[str]
    entries: dict[str, Entry]
    problems: list[str] = field(default_factory=list)  # files or fields that could not be used
    ignore_index: int = 255
    notes: list[str] = field(default_factory=list)  # how something was read (not an error): shown as warnings

    @property
    def images(self) -> dict[str, dict]:
        return {k: {"id": k, "file_name": e.image_ref or k, "height": e.height, "width": e.width}
                for k, e in self.entries.items()}

    @property
    def cat_to_class(self) -> dict[int, int]:
        return {i + 1: i for i in range(len(self.class_names))}

    @property
    def path(self) -> Path:
        return self.source

    def items(self) -> list[tuple[str, Path | None, Callable[[], np.ndarray]]]:
        """(key, image path, mask loader) per image: the small interface the issue asks for."""
        return [(k, e.image, e.load) for k, e in sorted(self.entries.items())]

    def mask(self, key: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        e = self.entries[key]
        m = e.load()
        if shape is not None and tuple(m.shape) != tuple(shape):
            raise InputError(f"{e.where}: mask is {m.shape[1]}x{m.shape[0]} but the image is {shape[1]}x{shape[0]}; "
                             "the correction belongs to another image")
        return m

    def ground_truth(self, image_root: Path | None) -> dict[str, Pair]:
        """Every mask (images optional: evaluate needs none), the photo under ``image_root`` or where the file says."""
        return {k: Pair((find_image(image_root, k, e) if image_root is not None else None) or e.image, None, k)
                for k, e in sorted(self.entries.items())}

    def pairs(self, image_root: Path | None) -> tuple[list[Pair], list[str]]:
        pairs, problems = [], list(self.problems) + list(self.notes)
        for key, e in sorted(self.entries.items()):
            img = find_image(image_root, key, e) if image_root is not None else None
            img = img or e.image
            if img is None:
                problems.append(f"{e.where}: image for {key!r} not found"
                                + (f" under {image_root}" if image_root else "") + "; pass --images ROOT")
            else:
                pairs.append(Pair(img, None, key))
        return pairs, problems


def find_image(root: Path, key: str, e: Entry | None = None) -> Path | None:
    cands = [root / f"{key}{x}" for x in IMAGE_EXTENSIONS + tuple(x.upper() for x in IMAGE_EXTENSIONS)]
    if e is not None and e.image_ref:
        cands += [root / e.image_ref, root / Path(e.image_ref).name]
    cands.append(root / Path(key).name)  # a key with a folder, photos flat under root
    for c in cands:
        if c.is_file():
            return c
    name = Path(key).name
    for x in IMAGE_EXTENSIONS:
        if (root / f"{name}{x}").is_file():
            return root / f"{name}{x}"
    return None


def read_json(path: Path, what: str) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e}); check the path") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); re-export it from {what}") from None


def field_error(path, field_name: str, fix: str) -> InputError:
    return InputError(f"{path}: field {field_name!r} {fix}")


def extra_module(import_name: str, what: str):
    """An optional dependency of the `export` extra, imported when first needed; missing: one line naming the extra."""
    import importlib

    try:
        return importlib.import_module(import_name)
    except ImportError:
        raise InputError(f'{what} needs {import_name.split(".")[0]}: pip install "fcn-label[export]"') from None


def layout_functions(read: Callable[[Path, int], Corrections]):
    """``pairs`` and ``ground_truth`` of a layout module (the LAYOUTS interface) from its reader."""

    def pairs(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
        corr = read(source, ignore_index)
        return (*corr.pairs(images), corr)

    def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
        corr = read(source, ignore_index)
        return corr.ground_truth(images), list(corr.problems) + list(corr.notes), corr

    return pairs, ground_truth
