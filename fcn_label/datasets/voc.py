"""PASCAL VOC: ``JPEGImages/`` + ``SegmentationClass/`` (+ ``ImageSets/Segmentation/<split>.txt``)."""

from __future__ import annotations

from pathlib import Path

from ..images import InputError
from .base import Pair, mask_folder
from .folders import pairs_from_folders

NAME = "voc"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir()


def pairs(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    return (*pairs_from_voc(source, split), None)


def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    """Every mask of SegmentationClass/ (or of the split's list); images are optional."""
    if split:
        found, problems = pairs_from_voc(source, split)
        return {p.key: p for p in found}, problems, None
    return mask_folder(source / "SegmentationClass", source / "JPEGImages", images), [], None


def pairs_from_voc(root: Path, split: str | None = None) -> tuple[list[Pair], list[str]]:
    jpeg, seg = root / "JPEGImages", root / "SegmentationClass"
    if not split:
        return pairs_from_folders(jpeg, seg)
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        avail = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        raise InputError(f"{ids_file}: split {split!r} not found; available: {', '.join(avail) or 'none'}")
    pairs, problems = [], []
    for i in ids_file.read_text().split():
        img, msk = jpeg / f"{i}.jpg", seg / f"{i}.png"
        if img.is_file() and msk.is_file():
            pairs.append(Pair(img, msk, i))
        else:
            problems.append(f"{ids_file}: id {i} lacks {img if not img.is_file() else msk}")
    return pairs, problems
