"""Reading a ``fcn-label predict`` output folder, and writing an export safely.

Paths come from :class:`~fcn_label.predict.layout.OutputLayout`. The per-image
records are the source of truth (they map each mask to its input photo and carry
the mean confidence); the COCO predictions file names the classes (category id =
class index + 1) and the model; colours come from :func:`fcn_label.classes.resolve_palette`
(the masks' palette).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np

from ..classes import choose_classes, explicit_classes, resolve_palette, voc_palette
from ..errors import InputError
from ..guard import guarded
from ..images import IMAGE_EXTENSIONS, read_mask, write_text_atomic
from ..markers import EXPORT_MARKER as MANIFEST  # marks --out as an export of one format
from ..predict.layout import OutputLayout
from ..predict.records import iter_segment_records, legacy_records


@dataclass(frozen=True)
class PredItem:
    rel: str  # mask path relative to PRED_DIR without suffix (POSIX)
    mask: Path
    source: str  # the input path predict recorded ('' when unknown)
    width: int
    height: int
    mean_confidence: float | None

    def labels(self) -> np.ndarray:
        m = read_mask(self.mask)
        if m.shape != (self.height, self.width):
            raise InputError(f"{self.mask}: mask is {m.shape[1]}x{m.shape[0]} but its record says "
                             f"{self.width}x{self.height}; re-run predict on this image with --overwrite")
        return m


@dataclass
class PredFolder:
    root: Path
    items: list[PredItem]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    model: str
    problems: list[str]  # one line per record or mask that could not be used

    def labels(self, it: PredItem) -> np.ndarray:
        """``it``'s mask, checked against the class list (a CVAT labelmap or LabelMe label must exist for each)."""
        labels = it.labels()
        if labels.max(initial=0) >= len(self.classes):
            raise InputError(f"{it.mask}: class index {int(labels.max())} but {OutputLayout(self.root).predictions_json.name} "
                             f"names {len(self.classes)} classes; re-run predict")
        return labels

    def find_image(self, it: PredItem, images: Path | None) -> Path:
        """The photo for ``it``: under --images by relative name, else the recorded input path."""
        if images is not None:
            for cand in _candidates(images, it.rel):
                if cand.is_file():
                    return cand
            src = Path(it.source) if it.source else None
            if src is not None and (images / src.name).is_file():
                return images / src.name
            raise InputError(f"{it.mask}: no image {it.rel}.* under --images {images}; check the folder")
        if it.source and Path(it.source).is_file():
            return Path(it.source)
        raise InputError(f"{it.mask}: input image {it.source or it.rel!r} not found; pass --images ROOT")


def _candidates(root: Path, rel: str) -> Iterable[Path]:
    base = root / rel
    yield from (base.with_name(base.name + e) for e in IMAGE_EXTENSIONS)
    yield from (base.with_name(base.name + e.upper()) for e in IMAGE_EXTENSIONS)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e}); check the path") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); re-run predict") from None


def read_pred_folder(root: str | os.PathLike) -> PredFolder:
    """Everything an exporter needs from a predict output folder; bad records become ``problems``."""
    root = Path(root)
    layout = OutputLayout(root)
    rec_dir = layout.records_dir
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give the --out folder of `fcn-label predict`")
    if not rec_dir.is_dir():
        raise InputError(f"{root}: no {rec_dir.relative_to(root).as_posix()} folder; give the --out folder of "
                         "`fcn-label predict`")
    items, problems = [], []
    found: dict[str, PredItem] = {}
    for seg, k, line in iter_segment_records(layout):  # the record store (last line of an image wins)
        where = f"{seg}:{k}"
        item, err = guarded(where, _segment_item, layout, where, line)  # one bad line: one line, the batch goes on
        if err:
            problems.append(err)
        else:
            found[item.rel] = item
    for rel, p in legacy_records(rec_dir):  # per-file records of earlier versions
        if rel in found:
            continue
        item, err = guarded(p, _record_item, layout, rel, p)
        if err:
            problems.append(err)
        else:
            found[rel] = item
    # the order of the per-file walk (files of a folder before its sub-folders), whichever store held them
    items = [found[r] for r in sorted(found, key=_walk_order)]
    classes, model = [], ""
    pj = layout.predictions_json
    if pj.is_file():
        d = _json(pj)
        try:
            cats = sorted(d["categories"], key=lambda c: c["id"])
            if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
                raise InputError(f"{pj}: field 'categories': ids must be 1..N (class index + 1); re-run predict")
            classes = [str(c["name"]) for c in cats]
            model = str((d.get("info") or {}).get("model", ""))
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{pj}: field 'categories' unusable ({type(e).__name__}: {e}); re-run predict") from None
    # names: the predictions file's (predict ran with --no-coco: class_0.. up to the largest label seen)
    labels = None if classes else sorted({int(v) for it in items[:50] for v in np.unique(it.labels())})
    spec = choose_classes(explicit_classes(names=classes or None), labels=labels or [0])
    resolve_palette(spec, first_mask=items[0].mask if items else None)
    palette = [tuple(int(v) for v in c) for c in (spec.palette or voc_palette())]
    return PredFolder(root, items, spec.names, palette[: max(spec.num, 1)], model, problems)


def _walk_order(rel: str) -> tuple:
    *dirs, name = rel.split("/")
    return tuple((1, d) for d in dirs) + ((0, name + ".json"),)


def _segment_item(layout: OutputLayout, where: str, line: bytes) -> PredItem:
    try:
        r = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: malformed JSON ({getattr(e, 'msg', e)}); re-run predict") from None
    fn = r.get("file_name") if isinstance(r, dict) else None
    if not isinstance(fn, str) or not fn.endswith(".png"):
        raise InputError(f"{where}: field 'file_name' missing or not a .png name; re-run predict on this image "
                         "with --overwrite")
    return _record_item(layout, fn[:-4], f"{where} ({fn[:-4]})", r)


def _record_item(layout: OutputLayout, rel: str, p, r=None) -> PredItem:
    if r is None:
        r = _json(p)
    if not isinstance(r, dict):
        raise InputError(f"{p}: expected a JSON object; re-run predict on this image with --overwrite")
    for field in ("width", "height"):
        if not isinstance(r.get(field), int):
            raise InputError(f"{p}: field {field!r} missing or not an integer; re-run predict on this image with --overwrite")
    mask = layout.mask(rel)
    if not mask.is_file():
        raise InputError(f"{mask}: mask missing for record {p}; re-run predict to finish it")
    mc = r.get("mean_confidence")
    return PredItem(rel, mask, str(r.get("path", "")), r["width"], r["height"],
                    float(mc) if isinstance(mc, (int, float)) else None)


def read_only_list(path: str | os.PathLike, folder: PredFolder) -> tuple[list[PredItem], list[str]]:
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
