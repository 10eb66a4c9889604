"""COCO instances JSON, rasterised to semantic masks with pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..images import InputError
from .base import Pair

NAME = "coco"


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


def pairs(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    coco = CocoRasteriser(source, ignore_index)
    return (*coco.pairs(images or source.parent / "images"), coco)


def ground_truth(source: Path, images: Path | None = None, split: str | None = None, ignore_index: int = 255):
    """Every image of the JSON; its file (under ``images`` or ``images/`` beside the JSON) when present."""
    coco = CocoRasteriser(source, ignore_index)
    root = images or source.parent / "images"
    items = {}
    for k, im in coco.images.items():
        p = root / im["file_name"]
        items[k] = Pair(p if p.is_file() else None, None, k)
    return items, [], coco


class CocoRasteriser:
    """COCO instances -> semantic masks: later (higher-index) annotations paint over earlier ones.

    Category ids are mapped to contiguous class indices 1..K in ascending id
    order, 0 is background; iscrowd regions are painted with the ignore label,
    since their pixels are not reliably any one class.
    """

    def __init__(self, json_path: Path, ignore_index: int = 255):
        from pycocotools import mask as mask_utils  # noqa: F401  (fail early if missing)

        self.path = json_path
        try:
            data = json.loads(Path(json_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{json_path}: cannot read ({e}); check the path") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{json_path}: malformed JSON ({e.msg} at line {e.lineno}); fix or re-export it") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise InputError(f"{json_path}: COCO JSON lacks the {key!r} list; expected an instances file")
        self.ignore_index = ignore_index
        try:  # a hand-edited or foreign file: any missing key is one clear line, not a traceback
            cats = sorted(data["categories"], key=lambda c: c["id"])
            self.class_names = ["background"] + [str(c["name"]) for c in cats]
            self.cat_to_class = {c["id"]: i + 1 for i, c in enumerate(cats)}
            self.images = {}
            for im in data["images"]:
                int(im["height"]), int(im["width"])  # needed to rasterise: refuse the file now, not per image
                self.images[Path(im["file_name"]).with_suffix("").as_posix()] = im
            self.anns: dict[int, list] = {}
            for a in data["annotations"]:
                self.anns.setdefault(a["image_id"], []).append(a)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            what = f"an entry lacks {e}" if isinstance(e, KeyError) else f"unexpected structure: {e}"
            raise InputError(f"{json_path}: not a usable COCO instances file ({what}); fix or re-export it") from None

    def pairs(self, image_root: Path) -> tuple[list[Pair], list[str]]:
        pairs, problems = [], []
        for key, im in sorted(self.images.items()):
            p = image_root / im["file_name"]
            if p.is_file():
                pairs.append(Pair(p, None, key))
            else:
                problems.append(f"{p}: image listed in {self.path} not found")
        return pairs, problems

    def mask(self, key: str, shape: tuple[int, int]) -> np.ndarray:
        im = self.images[key]
        h, w = int(im["height"]), int(im["width"])
        if (h, w) != tuple(shape):
            raise InputError(f"{self.path}: image {im['file_name']} is {shape[1]}x{shape[0]} but the JSON says {w}x{h}")
        out = np.zeros((h, w), dtype=np.uint8)
        for a in self.anns.get(im["id"], []):
            try:
                m = decode_segmentation(a.get("segmentation"), h, w)
            except ValueError as e:
                raise InputError(f"{self.path}: annotation {a.get('id')} {e}") from None
            if m is None:
                continue
            if not a.get("iscrowd") and "category_id" not in a:
                raise InputError(f"{self.path}: annotation {a.get('id')} has no 'category_id'; fix or re-export the file")
            out[m] = self.ignore_index if a.get("iscrowd") else self.cat_to_class.get(a["category_id"], 0)
        return out


def decode_segmentation(seg, h: int, w: int) -> "np.ndarray | None":
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) as a bool (h, w) mask.

    None when there is nothing to paint (no polygon with 3+ points, or no
    segmentation); ValueError for an RLE of another size or an undecodable one.
    """
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not polys:
            return None
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        except (TypeError, ValueError) as e:
            raise ValueError(f"unreadable polygon ({e})") from None
    elif isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", [])) != [h, w]:
            raise ValueError(f"RLE size {seg.get('size')} != image {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, list):
            if all(isinstance(c, int) for c in counts) and sum(counts) != h * w:
                raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not {h}x{w} = {h * w} pixels")
            try:
                rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(f"unreadable uncompressed RLE ({e})") from None
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"RLE counts of type {type(counts).__name__}; expected a string or a list of ints")
    else:
        return None
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises bare Exceptions from C for corrupt RLE strings
        raise ValueError(f"undecodable RLE ({e})") from None
