"""A list file of ``image mask`` lines (CamVid / SegNet style), paths relative to the list's folder."""

from __future__ import annotations

from pathlib import Path

from ..images import InputError
from .base import Pair

NAME = "list"


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() != ".json"


def pairs(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    return (*pairs_from_list(source), None)


def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    found, problems = pairs_from_list(source)
    return {p.key: p for p in found}, problems, None


def pairs_from_list(list_file: Path, root: Path | None = None) -> tuple[list[Pair], list[str]]:
    """``image mask`` per line (CamVid/SegNet style); relative paths resolve against ``root``."""
    if not list_file.is_file():
        raise InputError(f"{list_file}: list file not found; check the path")
    root = root or list_file.parent
    pairs, problems = [], []
    for n, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) != 2:
            problems.append(f"{list_file}:{n}: expected 'image mask', got {line.strip()!r}")
            continue
        img, msk = (Path(p) if Path(p).is_absolute() else root / p for p in parts)
        missing = [str(p) for p in (img, msk) if not p.is_file()]
        if missing:
            problems.append(f"{list_file}:{n}: file not found: {', '.join(missing)}")
            continue
        pairs.append(Pair(img, msk, Path(parts[0]).with_suffix("").as_posix()))
    return pairs, problems
