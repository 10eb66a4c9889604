"""Read a CVAT "Segmentation mask 1.1" export (folder or zip) as class-index masks.

Classes are ``labelmap.txt``'s labels in file order (a colour mask pixel of a
label's colour gets that label's index). CVAT's exporter puts a black
``background`` label first when the project has none (its colour for pixels
nobody annotated), so a black ``background`` first in the labelmap is read as
the ignore label, not a class, with a note saying so; in an fcn-label export
folder (``fcn-label export``'s marker file present) the labelmap is ours and read as written.
Colours not in the labelmap are an error naming the file.
"""

from __future__ import annotations

import io as _io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import IMAGE_EXTENSIONS
from ..markers import EXPORT_MARKER as OUR_MANIFEST
from .corrections import Corrections, Entry, layout_functions

NAME = "cvat"
LABELMAP = "labelmap.txt"


def _root_in_zip(names: list[str]) -> str | None:
    for n in names:
        if PurePosixPath(n).name == LABELMAP:
            parent = str(PurePosixPath(n).parent)
            return "" if parent == "." else parent + "/"
    return None


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / LABELMAP).is_file() and (path / "SegmentationClass").is_dir()
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
        root = _root_in_zip(names)
        return root is not None and any(n.startswith(root + "SegmentationClass/") for n in names)
    return False


def parse_labelmap(text: str, where: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    names, colours = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (IndexError, ValueError):
            raise InputError(f"{where}:{n}: field 'color_rgb' unreadable in {line.strip()!r}; expected "
                             "'name:r,g,b::' (re-export from CVAT)") from None
        names.append(parts[0].strip())
        colours.append(rgb)
    if not names:
        raise InputError(f"{where}: no labels; expected 'name:r,g,b::' lines (re-export from CVAT)")
    if len(set(colours)) != len(colours):
        raise InputError(f"{where}: two labels share a colour; give each label its own colour in CVAT")
    return names, colours


def colour_to_index(rgb: np.ndarray, colours: list, where: str, ignore_index: int) -> np.ndarray:
    """Colour mask -> class indices; a ``None`` entry in ``colours`` stands for unlabelled black."""
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    uniq, inv = np.unique(packed.ravel(), return_inverse=True)
    table = {(c[0] << 16) | (c[1] << 8) | c[2]: i for i, c in enumerate(colours) if c is not None}
    if None in colours:
        table[0] = ignore_index
    bad = [int(u) for u in uniq if int(u) not in table]
    if bad:
        u = bad[0]
        raise InputError(f"{where}: colour ({u >> 16},{(u >> 8) & 255},{u & 255}) is not in {LABELMAP}; "
                         "add the label or repaint those pixels")
    lut = np.array([table[int(u)] for u in uniq], dtype=np.uint8)
    return lut[inv].reshape(packed.shape)


def _decode(data: bytes | Path, where: str, colours, ignore_index: int) -> np.ndarray:
    try:
        with Image.open(_io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{where}: unreadable mask ({e}); re-export from CVAT") from None
    return colour_to_index(rgb, colours, where, ignore_index)


def _member(zpath: Path, name: str) -> bytes:
    """One member of the zip, opened per call: thread-safe, and nothing held in memory between masks."""
    with zipfile.ZipFile(zpath) as z:
        return z.read(name)


def _size(data, where: str) -> tuple[int, int]:
    try:
        with Image.open(_io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{where}: unreadable mask ({e}); re-export from CVAT") from None


def read(path: str | Path, ignore_index: int = 255) -> Corrections:
    """A CVAT mask export: every ``SegmentationClass/<key>.png``, listed in ImageSets or not."""
    path = Path(path)
    entries, problems, notes = {}, [], []
    if path.is_dir():
        names, colours = parse_labelmap((path / LABELMAP).read_text(encoding="utf-8", errors="replace"),
                                        str(path / LABELMAP))
        _unlabelled_background(path, names, colours, notes, ignore_index, (path / OUR_MANIFEST).is_file())
        seg = path / "SegmentationClass"
        jpeg = path / "JPEGImages"
        for p in sorted(seg.rglob("*.png")):
            key = p.relative_to(seg).with_suffix("").as_posix()
            try:
                w, h = _size(p, str(p))
            except InputError as e:
                problems.append(str(e))
                continue
            img = next((jpeg / f"{key}{x}" for x in IMAGE_EXTENSIONS if (jpeg / f"{key}{x}").is_file()), None)
            entries[key] = Entry(key, img, h, w, (lambda p=p: _decode(p, str(p), colours, ignore_index)), str(p))
    else:
        try:
            z = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"{path}: not a readable zip ({e}); re-export from CVAT") from None
        with z:
            all_names = z.namelist()
            root = _root_in_zip(all_names)
            if root is None:
                raise InputError(f"{path}: no {LABELMAP} in the zip; export 'Segmentation mask 1.1' from CVAT")
            names, colours = parse_labelmap(z.read(root + LABELMAP).decode("utf-8", "replace"), f"{path}!{LABELMAP}")
            _unlabelled_background(path, names, colours, notes, ignore_index, root + OUR_MANIFEST in all_names)
            prefix = root + "SegmentationClass/"
            for n in sorted(all_names):
                if not (n.startswith(prefix) and n.lower().endswith(".png")):
                    continue
                key = PurePosixPath(n[len(prefix):]).with_suffix("").as_posix()
                where = f"{path}!{n}"
                try:
                    with z.open(n) as f:  # the PNG header only: masks are decoded when used
                        w, h = _size(f, where)
                except InputError as e:
                    problems.append(str(e))
                    continue
                entries[key] = Entry(key, None, h, w,
                                     (lambda n=n, wh=where: _decode(_member(path, n), wh, colours, ignore_index)), where)
    if not entries:
        raise InputError(f"{path}: no SegmentationClass/*.png masks; export 'Segmentation mask 1.1' from CVAT")
    return Corrections("cvat", path, names, entries, problems, ignore_index, notes)


pairs, ground_truth = layout_functions(read)


def _unlabelled_background(path: Path, names: list, colours: list, notes: list, ignore_index: int,
                           ours: bool) -> None:
    """CVAT's inserted black 'background' first: unannotated pixels, read as ignore (edits the lists in place)."""
    if names and names[0] == "background" and tuple(colours[0]) == (0, 0, 0) and not ours and len(names) > 1:
        names.pop(0)
        colours.pop(0)
        colours.append(None)
        notes.append(f"{path}: {LABELMAP}: black 'background' is CVAT's colour for unannotated pixels; "
                        f"read as the ignore label {ignore_index}, not a class")
