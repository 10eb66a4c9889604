"""What an export reads from a prediction folder, and writing an export safely.

The folder is read through :class:`fcn_label.predfolder.PredictionFolder`: the records map each
mask to its input photo and carry the mean confidence; predictions.json names the classes
(category id = class index + 1) and the model; colours come from
:func:`fcn_label.classes.resolve_palette` (the masks' palette).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np

from ..classes import choose_classes, explicit_classes, resolve_palette, voc_palette
from ..errors import InputError
from ..guard import guarded
from ..images import write_text_atomic
from ..markers import EXPORT_MARKER as MANIFEST  # marks --out as an export of one format
from ..predfolder.reader import PredictionFolder, PredItem, find_photo


@dataclass
class ExportSource:
    """A prediction folder's finished images with the classes, colours and model an exporter writes."""

    folder: PredictionFolder
    items: list[PredItem]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    model: str
    problems: list[str]  # one line per record or mask that could not be used

    @property
    def root(self) -> Path:
        return self.folder.root

    def labels(self, it: PredItem) -> np.ndarray:
        """``it``'s mask, checked against the class list (a CVAT labelmap or LabelMe label must exist for each)."""
        labels = it.labels()
        if labels.max(initial=0) >= len(self.classes):
            raise InputError(f"{it.mask}: class index {int(labels.max())} but "
                             f"{self.folder.layout.predictions_json.name} names {len(self.classes)} classes; re-run predict")
        return labels

    def find_image(self, it: PredItem, images: Path | None) -> Path:
        """The photo for ``it`` (:func:`fcn_label.predfolder.find_photo`), or an InputError saying where to look."""
        photo = find_photo(self.root, it.rel, it.source, images)
        if photo is not None:
            return photo
        if images is not None:
            raise InputError(f"{it.mask}: no image {it.rel}.* under --images {images}; check the folder")
        raise InputError(f"{it.mask}: input image {it.source or it.rel!r} not found; pass --images ROOT")


def read_source(root: str | os.PathLike) -> ExportSource:
    """Everything an exporter needs from a prediction folder; bad records become ``problems``."""
    folder = PredictionFolder(root)
    items, problems = folder.items()
    cats = folder.categories()
    classes, model = cats if cats is not None else ([], "")
    # names: the predictions file's (predict ran with --no-coco: class_0.. up to the largest label seen)
    labels = None if classes else sorted({int(v) for it in items[:50] for v in np.unique(it.labels())})
    spec = choose_classes(explicit_classes(names=classes or None), labels=labels or [0])
    resolve_palette(spec, first_mask=items[0].mask if items else None)
    palette = [tuple(int(v) for v in c) for c in (spec.palette or voc_palette())]
    return ExportSource(folder, items, spec.names, palette[: max(spec.num, 1)], model, problems)


def read_only_list(path: str | os.PathLike, folder: ExportSource) -> tuple[list[PredItem], list[str]]:
    """Items named in a list file (one input path or relative name per line, as `select` writes)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--only {path}: cannot read ({e}); give a text file with one path per line") from None
    by_rel = {it.rel: it for it in folder.items}
    by_src = {os.path.normpath(os.path.abspath(it.source)): it for it in folder.items if it.source}
    by_name: dict[str, list[PredItem]] = {}
    for it in folder.items:
        by_name.setdefault(PurePosixPath(it.rel).name, []).append(it)
    chosen, problems, seen = [], [], set()
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s.split()[0] if not Path(s).exists() else s  # a list of 'image mask' lines: take the image
        stem = PurePosixPath(s.replace(os.sep, "/")).with_suffix("").as_posix()
        it = (by_rel.get(stem) or by_rel.get(s) or by_src.get(os.path.normpath(os.path.abspath(s)))
              or by_src.get(os.path.normpath(os.path.abspath(path.parent / s))))
        if it is None:
            cands = by_name.get(PurePosixPath(stem).name, [])
            it = cands[0] if len(cands) == 1 else None
        if it is None:
            problems.append(f"{path}:{n}: {s!r} is not among the predicted images in {folder.root}")
        elif it.rel not in seen:
            seen.add(it.rel)
            chosen.append(it)
    return chosen, problems


class OutGuard:
    """Every path written goes through here: refused if it would land outside --out."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.root = self.out.resolve()

    def __call__(self, rel: str) -> Path:
        p = self.out / rel
        if ".." in PurePosixPath(rel).parts or PurePosixPath(rel).is_absolute():
            raise InputError(f"{rel}: would be written outside --out {self.out}; rename the input")
        real = p.parent.resolve()
        if real != self.root and self.root not in real.parents:
            raise InputError(f"{p}: would be written outside --out {self.out} (through a symbolic link); remove the link")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def check_manifest(out: Path, fmt: str, overwrite: bool) -> None:
    """An --out holding another kind of export (or something else) is refused, not mixed into."""
    m = out / MANIFEST
    if m.is_file():
        try:
            prev = json.loads(m.read_text(encoding="utf-8")).get("format")
        except Exception:
            prev = None
        if prev != fmt and not overwrite:
            raise InputError(f"{out}: holds a {prev or 'unknown'} export, not {fmt}; choose another --out or pass --overwrite")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not overwrite:
        raise InputError(f"{out}: not empty and not an fcn-label export; choose an empty --out or pass --overwrite")
    if not m.is_file() or overwrite:  # claim the folder first, so an interrupted export can resume
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(m, json.dumps({"format": fmt}))


@dataclass
class ExportResult:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] | None = None
    files: list[Path] | None = None
    notes: list[str] | None = None  # exported, but worth a look (e.g. the photo was not found)
    summary: str | None = None  # one line on the whole export (labelme: the lowest share of pixels kept)

    def __post_init__(self):
        self.failed = self.failed or []
        self.files = self.files or []
        self.notes = self.notes or []


def run_items(items: Sequence[PredItem], done: Callable[[PredItem], bool], work: Callable[[PredItem], None],
              overwrite: bool, result: ExportResult, on_progress: Callable[[int, int], None] | None = None) -> None:
    """One boundary per image: any failure is one line, and the batch goes on."""
    for i, it in enumerate(items, 1):
        if not overwrite and done(it):
            result.skipped += 1
        else:
            _, err = guarded(it.mask, work, it)  # one bad image never stops the export
            if err:
                result.failed.append((str(it.mask), err))
            else:
                result.written += 1
        if on_progress:
            on_progress(i, len(items))
