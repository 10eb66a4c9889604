"""Export predicted masks to annotation tools (CVAT, Label Studio, LabelMe) for people to correct.

The corrected files come back as data layouts of :mod:`fcn_label.datasets` (labelstudio, cvat, labelme).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .common import ExportResult, ExportSource, read_only_list, read_source  # noqa: F401

FORMATS = ("cvat", "labelstudio", "labelme")


def export(pred_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, images: str | os.PathLike | None = None,
           only: str | os.PathLike | None = None, overwrite: bool = False, tolerance: float | None = None,
           url_prefix: str | None = None, on_progress=None) -> tuple[ExportResult, ExportSource, list[str]]:
    """Export PRED_DIR's masks in ``fmt`` under ``out``; returns the result, the folder and problem lines.

    ``tolerance`` (labelme): None chooses it per image so each keeps 99.5 % of its pixels; a number fixes it."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: unknown; choose one of {', '.join(FORMATS)}")
    pred_dir, out = Path(pred_dir), Path(out)
    images = Path(images) if images else None
    if images is not None and not images.is_dir():
        raise InputError(f"--images {images}: folder not found; check the path")
    folder = read_source(pred_dir)
    if out.resolve() == pred_dir.resolve() or pred_dir.resolve() in out.resolve().parents:
        raise InputError(f"--out {out}: inside the predict folder {pred_dir}; choose a folder outside it")
    problems = list(folder.problems)
    items = folder.items
    if only is not None:
        items, more = read_only_list(only, folder)
        problems += more
    if not items:
        raise InputError(f"{pred_dir}: no predicted images to export" + (f" ({problems[0]})" if problems else ""))
    if fmt == "cvat":
        from .cvat import export_cvat
        res = export_cvat(folder, out, items, overwrite=overwrite, on_progress=on_progress)
    elif fmt == "labelme":
        from .labelme import export_labelme
        res = export_labelme(folder, out, items, images=images, overwrite=overwrite, tolerance=tolerance,
                             on_progress=on_progress)
    else:
        from .labelstudio import DEFAULT_URL_PREFIX, export_labelstudio
        res = export_labelstudio(folder, out, items, images=images, overwrite=overwrite,
                                 url_prefix=DEFAULT_URL_PREFIX if url_prefix is None else url_prefix,
                                 on_progress=on_progress)
    return res, folder, problems
