"""What every data layout shares: the (image, mask) pair and finding files by relative stem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# The suffixes a class-index mask may have, everywhere (ground truth, predictions, training data).
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    image: Path | None  # None: a ground-truth mask whose image was not found (evaluate needs none)
    mask: Path | None  # None for COCO: the mask is rasterised from the JSON
    key: str  # relative stem, used for matching and reports


def files_by_stem(root: Path, exts: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            key = p.relative_to(root).with_suffix("").as_posix()
            out.setdefault(key, p)
    return out


def mask_folder(masks: Path, default_images: Path | None, images: Path | None) -> dict[str, Pair]:
    """Every mask in ``masks`` as ground truth; images (only needed for pictures and --weights) from
    ``images`` matched by name, else from ``default_images`` by equal key."""
    from ..images import IMAGE_EXTENSIONS
    from .matching import match_keys

    files = files_by_stem(masks, MASK_EXTENSIONS)
    folder = images or default_images
    image_files = files_by_stem(folder, IMAGE_EXTENSIONS) if folder else {}
    if images is not None:
        pairing, _, _ = match_keys(files, image_files)
    else:
        pairing = {k: k for k in files if k in image_files}
    return {k: Pair(image_files[pairing[k]] if k in pairing else None, p, k) for k, p in files.items()}
