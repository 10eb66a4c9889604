"""The prediction folder's format version, stored in ``OUT/.fcn-label/format.json``.

Every reader and predict itself check it first, so a folder this version cannot read is refused
with one line saying what to do, never half-read:

* version 2 (this one): the file is present; failure records carry a ``stage``.
* version 1: no file, records in ``.jsonl`` segments; read as version 2 (a failure line without a
  stage reads as stage "predict"). predict resuming into it writes the file.
* before version 1 (early development versions): per-file records (``records/<name>.json``, ``failures/<hash>.json``); refused.
* a higher version: written by a newer fcn-label; refused.
"""

from __future__ import annotations

import json
import os

from ..errors import InputError
from ..images import write_text_atomic
from .layout import OutputLayout

FORMAT_NAME = "fcn-label prediction folder"
FORMAT_VERSION = 2


def _has_per_file_records(layout: OutputLayout) -> bool:
    """Whether the record folders hold what versions before the record store wrote (one JSON file per image)."""
    for folder in (layout.records_dir, layout.failures_dir):
        try:
            with os.scandir(folder) as it:
                if any(not e.name.startswith(".") and (e.is_dir() or e.name.endswith(".json")) for e in it):
                    return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False


def read_version(raw: bytes, name: object, where: object) -> int:
    """The version in a format file's bytes (``name``: the file, ``where``: its folder, for the messages);
    one line for a damaged file or a newer format. A local folder and an object-store prefix share it."""
    try:
        version = int(json.loads(raw.decode("utf-8"))["version"])
    except Exception:  # noqa: BLE001 - any damage: the same one line
        raise InputError(f"{name}: damaged format file; delete it (the folder then reads as version 1) "
                         "or re-run predict into a new --out") from None
    if version > FORMAT_VERSION:
        raise InputError(f"{where}: written by a newer fcn-label (prediction folder format {version}, this "
                         f"version reads up to {FORMAT_VERSION}); upgrade fcn-label")
    return version


def format_text() -> str:
    """What a format file holds: written by :func:`claim`, and on an object store by predfolder.remote."""
    return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n"


def folder_version(layout: OutputLayout) -> int:
    """The format version of the folder at ``layout.out``; raises InputError for one this version cannot use."""
    where = layout.out
    f = layout.format_file
    if f.is_file():
        return read_version(f.read_bytes(), f, where)
    if _has_per_file_records(layout):
        raise InputError(f"{where}: written by an early fcn-label (per-file records in "
                         f"{layout.records_dir.relative_to(where).as_posix()}); re-run predict with this version "
                         "into a new --out")
    return 1


def claim(layout: OutputLayout) -> None:
    """Write the format file of a folder predict is about to write into (after :func:`folder_version` accepted it)."""
    if not layout.format_file.is_file():
        write_text_atomic(layout.format_file, format_text())
