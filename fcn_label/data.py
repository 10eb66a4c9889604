"""Training data: finding (image, mask) pairs in common layouts, and augmentation.

Layouts (see :func:`find_pairs`):

* VOC: ``JPEGImages/`` + ``SegmentationClass/`` (+ ``ImageSets/Segmentation/<split>.txt``)
* paired folders: ``images/`` + ``masks/`` matched by relative stem
* list file: one ``image mask`` pair per line, paths relative to the list's folder
* COCO instances JSON: rasterised to semantic masks with pycocotools
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .io import IMAGE_EXTENSIONS, InputError, read_image, read_mask


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path | None  # None for COCO: the mask is rasterised from ``coco_ann``
    key: str  # relative stem, used for matching and reports


def _files_by_stem(root: Path, exts: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            key = p.relative_to(root).with_suffix("").as_posix()
            out.setdefault(key, p)
    return out


def pairs_from_folders(images: Path, masks: Path) -> tuple[list[Pair], list[str]]:
    """Match by relative stem; returns the pairs and one message per unmatched file."""
    for d, what in ((images, "image"), (masks, "mask")):
        if not d.is_dir():
            raise InputError(f"{d}: {what} folder not found; check the path")
    imgs = _files_by_stem(images, IMAGE_EXTENSIONS)
    msks = _files_by_stem(masks, (".png", ".bmp", ".tif", ".tiff"))
    problems = [f"{imgs[k]}: no mask named {k}.png in {masks}" for k in sorted(set(imgs) - set(msks))]
    problems += [f"{msks[k]}: mask has no matching image in {images}" for k in sorted(set(msks) - set(imgs))]
    pairs = [Pair(imgs[k], msks[k], k) for k in sorted(set(imgs) & set(msks))]
    return pairs, problems


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


def detect_layout(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_file():
        return "list"
    if (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir():
        return "voc"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folders"
    raise InputError(
        f"{path}: cannot tell the dataset layout; expected a VOC folder (JPEGImages/ + SegmentationClass/), "
        "a folder with images/ + masks/, a list file of 'image mask' lines, or a COCO .json"
    )


# ---------------------------------------------------------------------------
# Augmentation: image and mask always go through the same geometry.


@dataclass
class Augment:
    """Random scale, crop (image padded with the mean, mask with ignore), flip, colour, blur."""

    crop: tuple[int, int] = (288, 384)  # (H, W)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.3  # brightness / contrast / saturation amplitude
    blur_p: float = 0.2
    ignore_index: int = 255

    def __call__(self, img: torch.Tensor, mask: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` float (3, H, W) in [0, 1], ``mask`` long (H, W)."""
        s = math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        H, W = img.shape[-2:]
        h, w = max(1, round(H * s)), max(1, round(W * s))
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        ch, cw = self.crop
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            # pad with 0.5 grey (close to the ImageNet mean) and the ignore label
            img = F.pad(img, (0, pw, 0, ph), value=0.45)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
        h, w = img.shape[-2:]
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        img, mask = img[:, y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        if self.jitter:
            j = self.jitter
            img = img * rng.uniform(1 - j, 1 + j)  # brightness
            m = img.mean()
            img = (img - m) * rng.uniform(1 - j, 1 + j) + m  # contrast
            g = img.mean(0, keepdim=True)
            img = (img - g) * rng.uniform(1 - j, 1 + j) + g  # saturation
            img = img.clamp(0, 1)
        if self.blur_p and rng.random() < self.blur_p:
            sigma = rng.uniform(0.3, 1.5)
            k = 2 * math.ceil(2 * sigma) + 1
            ax = torch.arange(k, dtype=img.dtype) - k // 2
            g1 = torch.exp(-(ax**2) / (2 * sigma**2))
            g1 = g1 / g1.sum()
            img = F.conv2d(F.pad(img[None], (k // 2,) * 4, mode="reflect"), g1.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
            img = F.conv2d(img, g1.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)[0]
        return img.contiguous(), mask.contiguous()


class SegmentationDataset(torch.utils.data.Dataset):
    """Decoded pairs as (float image in [0, 1], long mask); optionally cached in memory as uint8."""

    def __init__(self, pairs: Sequence[Pair], augment: Augment | None = None, cache: bool = False,
                 coco: "CocoRasteriser | None" = None, seed: int = 0):
        self.pairs = list(pairs)
        self.augment = augment
        self.coco = coco
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        p = self.pairs[i]
        img = read_image(p.image)
        mask = self.coco.mask(p.key, img.shape[:2]) if self.coco else read_mask(p.mask)
        if mask.shape != img.shape[:2]:
            raise InputError(
                f"{p.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {p.image} is "
                f"{img.shape[1]}x{img.shape[0]}; masks must match their images"
            )
        if self.cache:
            self._cache[i] = (img, mask)
        return img, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.load(i)
        t = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        m = torch.from_numpy(mask.astype(np.int64))
        if self.augment is not None:
            # per-(seed, epoch, index) stream: identical under resume and in any worker
            rng = random.Random(hash((self.seed, self.epoch, i)) & 0xFFFFFFFF)
            t, m = self.augment(t, m, rng)
        return t, m


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


def load_pairs(source: Path, images: Path | None = None, split: str | None = None,
               ignore_index: int = 255) -> tuple[list[Pair], list[str], "CocoRasteriser | None"]:
    """Pairs from any supported layout, with a message per skipped entry."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: not found; give a VOC folder, images/+masks/ folder, list file or COCO JSON")
    layout = detect_layout(source)
    if layout == "coco":
        coco = CocoRasteriser(source, ignore_index)
        pairs, problems = coco.pairs(images or source.parent / "images")
        return pairs, problems, coco
    if layout == "list":
        pairs, problems = pairs_from_list(source)
    elif layout == "voc":
        pairs, problems = pairs_from_voc(source, split)
    else:
        pairs, problems = pairs_from_folders(source / "images", source / "masks")
    return pairs, problems, None


def class_frequencies(ds: SegmentationDataset, num_classes: int, ignore_index: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(ds)):
        _, m = ds.load(i)
        v = m[(m != ignore_index) & (m < num_classes)]
        counts += np.bincount(v.ravel(), minlength=num_classes)[:num_classes]
    return counts


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Eigen & Fergus' median frequency balancing: w_c = median(f) / f_c."""
    f = counts / max(1, counts.sum())
    med = np.median(f[f > 0]) if (f > 0).any() else 1.0
    return np.where(f > 0, med / np.maximum(f, 1e-12), 0.0)


# ---------------------------------------------------------------------------
# Class names and palette: from a file, or found beside the dataset.

CLASS_FILE_NAME = "classes.txt"
# labelme's labelme2voc writes class_names.txt, '_background_' first; its labels.txt may start with
# '__ignore__' (label -1, saved in the masks as 255, the default ignore label): not a class.
CLASS_FILE_NAMES = (CLASS_FILE_NAME, "class_names.txt")
LABELME_RENAMES = {"_background_": "background"}
LABELME_IGNORE = "__ignore__"


def read_class_file(path: str | Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names, one per line in index order; ``name r g b`` lines also give the palette.

    A name may contain spaces; three trailing integers are read as its colour.
    Either every line has a colour or none does, so a half-coloured file is an
    error rather than a palette with holes. ``#`` starts a comment line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: classes file not found; give a text file with one class name per line")
    names, colours = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#") or line.strip() == LABELME_IGNORE:
            continue
        rgb = tuple(int(v) for v in parts[-3:]) if len(parts) >= 4 and all(v.isdigit() for v in parts[-3:]) else None
        if rgb is None:
            names.append(line.strip())
            continue
        if not all(0 <= v <= 255 for v in rgb):
            raise InputError(f"{path}:{n}: colour {rgb} out of range; expected 'name r g b' with 0-255 values")
        names.append(" ".join(parts[:-3]))
        colours.append(rgb)
    names = [LABELME_RENAMES.get(n, n) for n in names]
    if not names:
        raise InputError(f"{path}: no class names; write one name per line, in class index order")
    if colours and len(colours) != len(names):
        raise InputError(f"{path}: {len(colours)} of {len(names)} classes have a colour; give 'name r g b' on every line or on none")
    return names, colours or None


def find_class_file(source: str | Path) -> Path | None:
    """A ``classes.txt`` (or labelme's ``class_names.txt``) shipped with the dataset: inside a dataset
    folder, or beside a list file."""
    source = Path(source)
    for name in CLASS_FILE_NAMES:
        p = (source if source.is_dir() else source.parent) / name
        if p.is_file():
            return p
    return None


def mask_palette(path: str | Path | None) -> list[tuple[int, int, int]] | None:
    """The colour table embedded in a palette ('P') mask PNG (as VOC ships), else None."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            pal = im.getpalette() if im.mode == "P" else None
    except OSError:
        return None
    if not pal:
        return None
    pal = pal + [0] * (768 - len(pal))
    return [tuple(pal[i : i + 3]) for i in range(0, 768, 3)]
