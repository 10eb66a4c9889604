"""Class names, colours and the ignore label: the tables we know and ONE resolver.

Every verb asks :func:`resolve_classes` with whatever it has (a --classes file,
a model, a dataset, a prediction JSON, the labels found in the masks); the
sources are tried in one fixed order, so predict, evaluate and finetune name
the classes of the same data the same way.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .images import InputError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
# Files a dataset may ship its class names in: ours ('name' or 'name r g b' lines) and labelme's.
CLASS_FILE_NAME = "classes.txt"
LABELME_CLASS_FILE_NAME = "class_names.txt"
CLASS_FILE_NAMES = (CLASS_FILE_NAME, LABELME_CLASS_FILE_NAME)
LABELME_IGNORE, LABELME_BACKGROUND = "__ignore__", "_background_"
LABELME_IGNORE_INDEX = 255  # labelme2voc writes __ignore__ (label -1) as 255

Colour = tuple[int, int, int]


def voc_palette(n: int = 256) -> list[Colour]:
    """The PASCAL VOC colour map (bit-interleaved class index), 256 entries; a new list each call."""
    return list(_voc_colours(n))


@functools.lru_cache(maxsize=8)
def _voc_colours(n: int) -> tuple[Colour, ...]:
    """Cached: every mask PNG's palette starts from it, and building it took 0.36 ms, a quarter of
    a 480x360 mask's encoding."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


@dataclass
class ClassSpec:
    """Class names (their count is N), colours, the ignore label a class file declares, and where they came from."""

    names: list[str]
    palette: list[Colour] | None
    source: str
    ignore_index: int | None = None

    @property
    def num(self) -> int:
        return len(self.names)


def read_class_file(path: str | Path) -> tuple[list[str], list[Colour] | None]:
    """Class names, one per line in index order; ``name r g b`` lines also give the palette.

    A name may contain spaces; three trailing integers are read as its colour.
    Either every line has a colour or none does, so a half-coloured file is an
    error rather than a palette with holes. ``#`` starts a comment line.
    labelme's ``class_names.txt`` is read as labelme means it: ``__ignore__`` is
    not a class (see :func:`read_class_spec`) and ``_background_`` is "background".
    """
    spec = read_class_spec(path)
    return spec.names, spec.palette


def read_class_spec(path: str | Path) -> ClassSpec:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: classes file not found; give a text file with one class name per line")
    names, colours, ignore = [], [], None
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if line.strip() == LABELME_IGNORE:
            ignore = LABELME_IGNORE_INDEX
            continue
        rgb = tuple(int(v) for v in parts[-3:]) if len(parts) >= 4 and all(v.isdigit() for v in parts[-3:]) else None
        if rgb is None:
            names.append("background" if line.strip() == LABELME_BACKGROUND else line.strip())
            continue
        if not all(0 <= v <= 255 for v in rgb):
            raise InputError(f"{path}:{n}: colour {rgb} out of range; expected 'name r g b' with 0-255 values")
        names.append(" ".join(parts[:-3]))
        colours.append(rgb)
    if not names:
        raise InputError(f"{path}: no class names; write one name per line, in class index order")
    if colours and len(colours) != len(names):
        raise InputError(f"{path}: {len(colours)} of {len(names)} classes have a colour; give 'name r g b' on every line or on none")
    return ClassSpec(names, colours or None, str(path), ignore)


def find_class_file(source: str | Path) -> Path | None:
    """A ``classes.txt`` (or labelme's ``class_names.txt``) shipped with the dataset: inside its folder, or beside a list file."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    return next((folder / n for n in CLASS_FILE_NAMES if (folder / n).is_file()), None)


def mask_palette(path: str | Path | None) -> list[Colour] | None:
    """The colour table embedded in a palette ('P') mask PNG (as VOC ships), else None."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            pal = im.getpalette() if im.mode == "P" else None
    except Exception:  # only a hint for colours: the label scan reports a broken mask, with its file
        return None
    if not pal:
        return None
    pal = pal + [0] * (768 - len(pal))
    return [tuple(pal[i : i + 3]) for i in range(0, 768, 3)]


def default_palette(class_names: Sequence[str]) -> list[Colour] | None:
    """CamVid's own colours when the classes are CamVid's; None means the VOC colour map."""
    return list(CAMVID_PALETTE) if tuple(class_names) == tuple(CAMVID_CLASSES) else None


def json_categories(pred: str | Path | None) -> list[str] | None:
    """Category names of a prediction JSON, or of the predictions.json predict left beside its masks."""
    if pred is not None and Path(pred).is_dir():
        pred = Path(pred) / "predictions.json"
    if pred is None or not Path(pred).is_file():
        return None
    try:
        data = json.loads(Path(pred).read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: int(c["id"])) if isinstance(data, dict) else None
        return [str(c.get("name", f"class_{i}")) for i, c in enumerate(cats)] if cats else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # the predictions reader reports a broken file properly


def resolve_classes(num_classes: int | None = None, classes_file: str | Path | None = None, checkpoint=None, *,
                    names: Sequence[str] | None = None, palette: Sequence[Colour] | None = None,
                    dataset: str | Path | None = None, layout: str | None = None,
                    dataset_names: Sequence[str] | None = None, first_mask: str | Path | None = None,
                    pred: str | Path | None = None, init=None, labels: Sequence[int] | None = None,
                    log: Callable[[str], None] | None = None) -> ClassSpec:
    """Class names from the first source that has them, so CamVid / VOC / COCO / labelme need no flags.

    Order: ``names`` / --classes (``classes_file``), the model that predicts
    (``checkpoint``: fixes N), the dataset's own categories (COCO), a
    ``classes.txt`` or labelme ``class_names.txt`` beside ``dataset``, CamVid's
    names for 11 classes of a CamVid path, the --init model's names, VOC's 21
    names for a VOC layout, the categories of a prediction JSON, then
    ``class_0..`` for --num-classes or for the largest label in ``labels``. A
    found source whose count disagrees with --num-classes is passed over.

    Colours: ``palette``, the file's, the model's (or --init's for the same
    names), the first palette mask's, CamVid's for CamVid names, else None (the
    VOC colour map).
    """
    say = log or (lambda msg: None)
    spec = None
    if names is not None:
        spec = ClassSpec(list(names), None, "--classes")
    elif classes_file is not None:
        spec = read_class_spec(classes_file)
    if spec is not None and num_classes is not None and num_classes != spec.num:
        raise InputError(f"--num-classes {num_classes} but --classes {classes_file or ''}".rstrip()
                         + f" lists {spec.num} names; drop one or fix the file")
    if checkpoint is not None:
        n = checkpoint.config.num_classes
        if num_classes is not None and num_classes != n:
            raise InputError(f"--num-classes {num_classes} but the model predicts {n} classes; drop --num-classes")
        if spec is not None and spec.num != n:
            raise InputError(f"--classes lists {spec.num} names but the model predicts {n} classes")
        spec = spec or ClassSpec(list(checkpoint.classes), None, "the model")
        spec.palette = spec.palette or [tuple(c) for c in checkpoint.palette]
    hint = num_classes
    if hint is None and labels is not None:
        found = [int(v) for v in labels]
        hint = max(found) + 1 if found else None
    if spec is None:
        found_file = find_class_file(dataset) if dataset is not None else None
        file_spec = read_class_spec(found_file) if found_file else None
        if found_file and num_classes is not None and file_spec.num != num_classes:
            say(f"warning: {found_file} lists {file_spec.num} classes but --num-classes is {num_classes}; not used")
        camvid = hint == len(CAMVID_CLASSES) and dataset is not None and "camvid" in str(dataset).lower()
        init_fits = init is not None and (num_classes is None or init.config.num_classes == num_classes)
        candidates = [
            (lambda: ClassSpec(list(dataset_names), None, f"{dataset} categories") if dataset_names else None),
            (lambda: file_spec),
            (lambda: ClassSpec(list(CAMVID_CLASSES), None, "CamVid's class list") if camvid else None),
            (lambda: ClassSpec(list(init.classes), None, "the --init model") if init_fits else None),
            (lambda: ClassSpec(list(VOC_CLASSES), None, "VOC's class list")
             if layout == "voc" and hint in (None, len(VOC_CLASSES)) else None),
            (lambda: ClassSpec(list(n), None, f"the categories of the predictions in {pred}")
             if (n := json_categories(pred)) else None),
        ]
        for make in candidates:
            c = make()
            if c is not None and (num_classes is None or c.num == num_classes):
                spec = c
                break
        if spec is not None and spec is file_spec:
            say(f"classes: {spec.num} names from {found_file}")
        elif spec is not None and spec.source == "VOC's class list":
            say(f"classes: the 21 PASCAL VOC names (VOC layout, no classes file); "
                f"pass --classes FILE if {dataset} uses other classes")
    if spec is None:
        if hint is None:
            raise InputError(
                "cannot tell the number of classes: give --num-classes N, or --classes FILE (one name per line), "
                "or --weights (the model's classes), or put a classes.txt beside the ground truth; "
                "e.g. CamVid: --classes camvid/classes.txt --ignore-index 11, VOC: --num-classes 21"
            )
        if num_classes is None:
            say(f"classes: {hint} inferred from the masks (largest label {hint - 1}); "
                "pass --classes FILE to name them or --num-classes if some never occur")
        spec = ClassSpec([f"class_{i}" for i in range(hint)], None, "--num-classes" if num_classes else "the masks")
    if palette:
        spec.palette = [tuple(c) for c in palette]
    if spec.palette is None and init is not None and list(init.classes) == spec.names:
        spec.palette = [tuple(c) for c in init.palette]
    if spec.palette is None:
        spec.palette = mask_palette(first_mask)
    if spec.palette is None:
        spec.palette = default_palette(spec.names)
    return spec
