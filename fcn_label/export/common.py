"""Reading a ``fcn-label predict`` output folder, and writing an export safely.

The per-image records under ``.fcn-label/records`` are the source of truth (they
map each mask to its input photo and carry the mean confidence); predictions.json
names the classes (category id = class index + 1) and the model; the masks'
palette gives the colours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np

from ..io import IMAGE_EXTENSIONS, InputError, read_mask

STATE_DIR = ".fcn-label"
MANIFEST = ".fcn-label-export.json"  # in --out: marks the folder as an fcn-label export of one format (hidden,
# so it never clashes with an image named export.* nor shows up as a LabelMe file)


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
    rec_dir = root / STATE_DIR / "records"
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give the --out folder of `fcn-label predict`")
    if not rec_dir.is_dir():
        raise InputError(f"{root}: no {STATE_DIR}/records folder; give the --out folder of `fcn-label predict`")
    items, problems = [], []
    for dirpath, dirnames, filenames in os.walk(rec_dir):
        dirnames.sort()
        for f in sorted(filenames):
            if not f.endswith(".json") or f.startswith("."):
                continue
            p = Path(dirpath) / f
            rel = p.relative_to(rec_dir).with_suffix("").as_posix()
            try:
                r = _json(p)
                if not isinstance(r, dict):
                    raise InputError(f"{p}: expected a JSON object; re-run predict on this image with --overwrite")
                for field in ("width", "height"):
                    if not isinstance(r.get(field), int):
                        raise InputError(f"{p}: field {field!r} missing or not an integer; re-run predict on this image with --overwrite")
                mask = root / f"{rel}.png"
                if not mask.is_file():
                    raise InputError(f"{mask}: mask missing for record {p}; re-run predict to finish it")
                mc = r.get("mean_confidence")
                items.append(PredItem(rel, mask, str(r.get("path", "")), r["width"], r["height"],
                                      float(mc) if isinstance(mc, (int, float)) else None))
            except InputError as e:
                problems.append(str(e))
            except Exception as e:  # any other surprise in one record: report it, keep the batch going
                problems.append(f"{p}: unusable record ({type(e).__name__}: {e}); re-run predict on this image with --overwrite")
    classes, model = [], ""
    pj = root / "predictions.json"
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
    palette = _palette(items)
    if not classes:  # predict ran with --no-coco: name the classes by index
        top = max((int(it.labels().max()) for it in items[:50]), default=0)
        classes = [f"class_{i}" for i in range(top + 1)]
    return PredFolder(root, items, classes, palette[: max(len(classes), 1)], model, problems)


def _palette(items: Sequence[PredItem]) -> list[tuple[int, int, int]]:
    from PIL import Image

    from ..weights import voc_palette

    for it in items[:1]:
        try:
            with Image.open(it.mask) as im:
                pal = im.getpalette() if im.mode == "P" else None
        except OSError:
            pal = None
        if pal:
            pal = pal + [0] * (768 - len(pal))
            return [tuple(pal[i: i + 3]) for i in range(0, 768, 3)]
    return [tuple(c) for c in voc_palette(256)]


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
        from ..io import write_text_atomic

        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(m, json.dumps({"format": fmt}))


@dataclass
class ExportResult:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] | None = None
    files: list[Path] | None = None
    notes: list[str] | None = None  # exported, but worth a look (e.g. the photo was not found)

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
            try:
                work(it)
                result.written += 1
            except InputError as e:
                result.failed.append((str(it.mask), str(e)))
            except Exception as e:  # noqa: BLE001  one bad image never stops the export
                result.failed.append((str(it.mask), f"{it.mask}: {type(e).__name__}: {e}"))
        if on_progress:
            on_progress(i, len(items))
