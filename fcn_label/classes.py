"""Class names, colours and the ignore label: the tables we know and how a verb settles them.

Three steps, each its own function: :func:`explicit_classes` (what the user
said: --classes, --num-classes, the model that predicts), :func:`choose_classes`
(else the first of the candidate sources the caller lists, e.g.
:func:`class_file_beside` the data, else ``class_0..``) and :func:`resolve_palette`
(the colours). The caller knows its data, so it decides which candidates exist;
the rules for a count that disagrees and for the generic names are here, once.
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
    """Cached: every mask PNG's palette starts from it, and building it costs as much as a good part
    of a frame's mask encoding."""
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


@dataclass(frozen=True)
class Candidate:
    """A place the classes may be named, offered by the caller that knows the data.

    ``find`` returns the names (or None when this place has none); ``chosen`` is
    logged when they are used, ``passed_over`` when their count disagrees with
    --num-classes (both formatted with ``n``, ``source`` and ``num``).
    """

    find: Callable[[], ClassSpec | None]
    chosen: str = ""
    passed_over: str = ""


def explicit_classes(num_classes: int | None = None, *, names: Sequence[str] | None = None,
                     classes_file: str | Path | None = None, checkpoint=None) -> ClassSpec | None:
    """What the user said (--classes names or file) and the model that predicts, checked against each other.

    None when neither names the classes: the caller's candidates decide then.
    The model fixes the count, so a disagreeing --classes or --num-classes is an error, not a choice.
    """
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
    return spec


# -- candidate sources: each caller lists those its data has, in the order they should win ---------------------------

def dataset_categories(names: Sequence[str] | None, dataset: str | Path | None) -> Candidate:
    """The categories a dataset format declares itself (COCO's)."""
    return Candidate(lambda: ClassSpec(list(names), None, f"{dataset} categories") if names else None)


def class_file_beside(dataset: str | Path | None) -> Candidate:
    """A ``classes.txt`` (or labelme's ``class_names.txt``) in the dataset's folder or beside its list file."""
    def find() -> ClassSpec | None:
        found = find_class_file(dataset) if dataset is not None else None
        return read_class_spec(found) if found else None

    return Candidate(find, chosen="classes: {n} names from {source}",
                     passed_over="warning: {source} lists {n} classes but --num-classes is {num}; not used")


def model_classes(ck, what: str = "the --init model") -> Candidate:
    """The names a checkpoint was trained with (fine-tuning from it keeps them unless the data says otherwise)."""
    return Candidate(lambda: ClassSpec(list(ck.classes), None, what) if ck is not None else None)


def voc_classes(layout: str | None, dataset: str | Path | None = None, count: int | None = None) -> Candidate:
    """VOC's 21 names for a VOC folder, unless the data shows another count.

    ``count``: the class count the caller knows (--num-classes, or the largest mask label + 1); None when unknown.
    """
    fits = layout == "voc" and count in (None, len(VOC_CLASSES))
    return Candidate(lambda: ClassSpec(list(VOC_CLASSES), None, "VOC's class list") if fits else None,
                     chosen="classes: the 21 PASCAL VOC names (VOC layout, no classes file); "
                            f"pass --classes FILE if {dataset} uses other classes")


def prediction_categories(pred: str | Path | None) -> Candidate:
    """The categories of a prediction JSON (or of the predictions.json beside predicted masks)."""
    return Candidate(lambda: ClassSpec(list(n), None, f"the categories of the predictions in {pred}")
                     if (n := json_categories(pred)) else None)


def choose_classes(explicit: ClassSpec | None, candidates: Sequence[Candidate] = (), *,
                   num_classes: int | None = None, labels: Sequence[int] | None = None,
                   log: Callable[[str], None] | None = None) -> ClassSpec:
    """The explicit spec, else the first candidate whose count fits --num-classes, else ``class_0..``.

    The count of the generic names is --num-classes, or the largest label in
    ``labels`` + 1; with neither, the user is told which flag names the classes.
    The palette is left to :func:`resolve_palette`.
    """
    say = log or (lambda msg: None)
    if explicit is not None:
        return explicit
    for cand in candidates:
        spec = cand.find()
        if spec is None:
            continue
        if num_classes is not None and spec.num != num_classes:
            if cand.passed_over:
                say(cand.passed_over.format(n=spec.num, source=spec.source, num=num_classes))
            continue
        if cand.chosen:
            say(cand.chosen.format(n=spec.num, source=spec.source, num=num_classes))
        return spec
    hint = num_classes
    if hint is None and labels is not None:
        found = [int(v) for v in labels]
        hint = max(found) + 1 if found else None
    if hint is None:
        raise InputError(
            "cannot tell the number of classes: give --num-classes N, or --classes FILE (one name per line), "
            "or --weights (the model's classes), or put a classes.txt beside the ground truth; "
            "e.g. CamVid: --classes camvid/classes.txt --ignore-index 11, VOC: --num-classes 21"
        )
    if num_classes is None:
        say(f"classes: {hint} inferred from the masks (largest label {hint - 1}); "
            "pass --classes FILE to name them or --num-classes if some never occur")
    return ClassSpec([f"class_{i}" for i in range(hint)], None, "--num-classes" if num_classes else "the masks")


def resolve_palette(spec: ClassSpec, palette: Sequence[Colour] | None = None, *, init=None,
                    first_mask: str | Path | None = None) -> ClassSpec:
    """Fill ``spec.palette`` from the first source that has colours; returns ``spec``.

    Order: ``palette`` (given explicitly), the spec's own (a ``name r g b``
    class file, the predicting model), --init's when it names the same classes,
    the first palette mask's, CamVid's for CamVid's names, else None (the VOC colour map).
    """
    if palette:
        spec.palette = [tuple(c) for c in palette]
    if spec.palette is None and init is not None and list(init.classes) == spec.names:
        spec.palette = [tuple(c) for c in init.palette]
    if spec.palette is None:
        spec.palette = mask_palette(first_mask)
    if spec.palette is None:
        spec.palette = default_palette(spec.names)
    return spec
