"""A prediction folder's files as a local run and a run writing to an object store leave them, made
comparable: the pictures both runs predict, every output file read into a dict, and the reports with input
paths mapped (local path vs URL) and the per-image timing column dropped. Shared by the S3 and the GCS /
Azure tests."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image

from support.helpers import rand_image
from support.synth import make_arrays

SEGMENTS = (".fcn-label/records/", ".fcn-label/failures/")


def pictures(folder: Path, n: int = 6, big: bool = False, broken: bool = True) -> Path:
    """``n`` small pictures in ``folder`` and ``folder/sub``, and one damaged file."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i, (stem, img, _) in enumerate(make_arrays(n)):
        if big:
            img = rand_image(96, 128, i)
        Image.fromarray(img).save(folder / ("sub" if i % 2 else "") / f"{stem}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not p.relative_to(root).as_posix().startswith(SEGMENTS + (".fcn-label/reports.lock",))}


def comparable(files: dict[str, bytes], path_from: str = "", path_to: str = "") -> dict[str, bytes]:
    """Every file but the record segments; the reports with input paths mapped and the timing column dropped."""
    out = {}
    for name, data in files.items():
        if name.startswith(SEGMENTS):
            continue
        if name in ("predictions.csv", "failures.csv"):
            text = data.decode().replace(path_from, path_to) if path_from else data.decode()
            rows = list(csv.reader(io.StringIO(text)))
            if name == "predictions.csv":
                k = rows[0].index("seconds")
                rows = [r[:k] + r[k + 1:] for r in rows]
            data = "\n".join(",".join(r) for r in rows).encode()
        out[name] = data
    return out
