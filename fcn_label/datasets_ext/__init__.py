"""Corrections coming back from annotation tools: Label Studio JSON, CVAT mask folders/zips, LabelMe folders.

:func:`detect` tells the layout (None for the layouts :mod:`fcn_label.data`
already knows); :func:`open_corrections` reads one. Each reader returns a
:class:`~fcn_label.datasets_ext._base.Corrections`, which the training and
evaluation code uses like a COCO rasteriser.
"""

from __future__ import annotations

from pathlib import Path

from ._base import Corrections, Entry  # noqa: F401

LAYOUTS = ("labelstudio", "cvat", "labelme")


def detect(path: str | Path) -> str | None:
    from .cvat import is_cvat
    from .labelme import is_labelme
    from .labelstudio import is_labelstudio

    path = Path(path)
    if is_labelstudio(path):
        return "labelstudio"
    if is_cvat(path):
        return "cvat"
    if is_labelme(path):
        return "labelme"
    return None


def open_corrections(path: str | Path, layout: str | None = None, ignore_index: int = 255) -> Corrections:
    layout = layout or detect(path)
    if layout == "labelstudio":
        from .labelstudio import read_labelstudio
        return read_labelstudio(path, ignore_index)
    if layout == "cvat":
        from .cvat import read_cvat
        return read_cvat(path, ignore_index)
    if layout == "labelme":
        from .labelme import read_labelme
        return read_labelme(path, ignore_index)
    from ..io import InputError
    raise InputError(f"{path}: not a Label Studio JSON export, CVAT mask folder/zip or LabelMe folder")
