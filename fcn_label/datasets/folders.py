"""images/ + masks/ folders, matched by relative stem."""

from __future__ import annotations

from pathlib import Path

from ..images import IMAGE_EXTENSIONS, InputError
from .base import MASK_EXTENSIONS, Pair, files_by_stem, mask_folder

NAME = "folders"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()


def pairs(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    return (*pairs_from_folders(source / "images", source / "masks"), None)


def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    return mask_folder(source / "masks", source / "images", images), [], None


def pairs_from_folders(images: Path, masks: Path) -> tuple[list[Pair], list[str]]:
    """Match by relative stem; returns the pairs and one message per unmatched file."""
    for d, what in ((images, "image"), (masks, "mask")):
        if not d.is_dir():
            raise InputError(f"{d}: {what} folder not found; check the path")
    imgs = files_by_stem(images, IMAGE_EXTENSIONS)
    msks = files_by_stem(masks, MASK_EXTENSIONS)
    problems = [f"{imgs[k]}: no mask named {k}.png in {masks}" for k in sorted(set(imgs) - set(msks))]
    problems += [f"{msks[k]}: mask has no matching image in {images}" for k in sorted(set(msks) - set(imgs))]
    pairs = [Pair(imgs[k], msks[k], k) for k in sorted(set(imgs) & set(msks))]
    return pairs, problems
