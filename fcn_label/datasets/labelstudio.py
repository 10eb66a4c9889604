"""Read a Label Studio JSON export (brush RLE annotations) as class-index masks.

Per task, the latest annotation that was not cancelled is used; its
``brushlabels`` regions (label-studio-sdk's RLE decoder, alpha channel) are
painted in order, later over earlier, and unpainted pixels get the ignore label.
Tasks nobody annotated are skipped with a note. Classes come from the task data
``fcn_label_classes`` that ``fcn-label export`` writes (kept by Label Studio),
else the labels found, sorted. Keys come from ``fcn_label_key``, else the image
file name (Label Studio's upload prefix ``abcd1234-`` removed).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import InputError
from ..guard import failure_message
from .corrections import Corrections, Entry, extra_module, layout_functions, read_json

NAME = "labelstudio"

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def _brush():
    return extra_module("label_studio_sdk.converter.brush", "reading Label Studio brush masks")


def detect(path: Path) -> bool:
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("utf-8", "replace").lstrip()
    except OSError:
        return False
    # a task list: [{"id": .., "annotations": [..], .., "data": {..}}]; the key order varies and brush RLE
    # arrays are long, so any of the task keys will do; a COCO results list has "image_id" instead
    return head.startswith("[") and '"image_id"' not in head and any(
        k in head for k in ('"annotations"', '"predictions"', '"data"'))


def _image_ref(url: str) -> str:
    """The file path a Label Studio image URL points to, as far as it can be told."""
    u = urllib.parse.urlparse(url)
    q = urllib.parse.parse_qs(u.query)
    if "d" in q:  # /data/local-files/?d=rel/path.jpg
        return q["d"][0]
    name = urllib.parse.unquote(u.path)
    if "/data/upload/" in name:
        base = PurePosixPath(name).name
        return _UPLOAD_PREFIX.sub("", base)
    return name.lstrip("/") if u.scheme in ("", "file") else PurePosixPath(name).name


def decode_region(rle, h: int, w: int) -> np.ndarray:
    """One brush region's painted pixels, by the SDK's decoder (alpha >= 128)."""
    flat = _brush().decode_rle(rle)
    if flat.size != h * w * 4:
        raise ValueError(f"RLE holds {flat.size} values, not {w}x{h}x4")
    return flat.reshape(h, w, 4)[:, :, 3] >= 128


def _latest(task: dict) -> dict | None:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return anns[-1] if anns else None


def _task_mask(task: dict, ann: dict, index: dict[str, int], ignore_index: int, where: str) -> np.ndarray:
    h = w = None
    out = None
    for i, r in enumerate(ann.get("result") or []):
        if not isinstance(r, dict) or r.get("type") != "brushlabels":
            continue
        f = f"annotations.result[{i}]"
        try:
            rh, rw = int(r["original_height"]), int(r["original_width"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: field '{f}.original_height/original_width' missing; re-export from Label Studio") from None
        if out is None:
            h, w = rh, rw
            out = np.full((h, w), ignore_index, dtype=np.uint8)
        elif (rh, rw) != (h, w):
            raise InputError(f"{where}: field '{f}.original_width' {rw}x{rh} differs from the task's {w}x{h}")
        v = r.get("value") or {}
        labels = v.get("brushlabels")
        if not isinstance(labels, list) or not labels:
            raise InputError(f"{where}: field '{f}.value.brushlabels' missing; give the region a label")
        if labels[0] not in index:
            raise InputError(f"{where}: field '{f}.value.brushlabels' {labels[0]!r} is not a class ({', '.join(index)})")
        if v.get("format", "rle") != "rle" or not isinstance(v.get("rle"), list):
            raise InputError(f"{where}: field '{f}.value.rle' missing or not a list of ints; re-export from Label Studio")
        try:
            m = decode_region(v["rle"], h, w)
        except Exception as e:  # noqa: BLE001  the SDK's decoder raises anything on corrupt input
            raise InputError(f"{where}: field '{f}.value.rle' undecodable ({e}); re-export from Label Studio") from None
        out[m] = index[labels[0]]
    if out is None:
        raise InputError(f"{where}: no brushlabels region in the annotation; paint the image or skip the task")
    return out


def _size(task: dict, ann: dict) -> tuple[int, int] | None:
    for r in ann.get("result") or []:
        if isinstance(r, dict) and r.get("type") == "brushlabels":
            try:
                return int(r["original_height"]), int(r["original_width"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def read(path: str | Path, ignore_index: int = 255) -> Corrections:
    path = Path(path)
    tasks = read_json(path, "Label Studio (Export > JSON)")
    if not isinstance(tasks, list):
        raise InputError(f"{path}: expected a list of tasks (Label Studio's Export > JSON); JSON-MIN and COCO are other formats")
    _brush()
    names: list[str] | None = None
    found: set[str] = set()
    entries, problems, notes = {}, [], []
    for t_i, task in enumerate(tasks):
        tid = task.get("id", t_i) if isinstance(task, dict) else t_i
        where = f"{path} task {tid}"
        try:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise InputError(f"{where}: field 'data' missing; re-export from Label Studio")
            data = task["data"]
            if names is None and isinstance(data.get("fcn_label_classes"), list):
                names = [str(n) for n in data["fcn_label_classes"]]
            ann = _latest(task)
            if ann is None:
                notes.append(f"{where}: not annotated (or only cancelled annotations); skipped")
                continue
            for r in ann.get("result") or []:
                if isinstance(r, dict) and r.get("type") == "brushlabels":
                    found.update(str(x) for x in (r.get("value") or {}).get("brushlabels") or [])
            size = _size(task, ann)
            if size is None:
                raise InputError(f"{where}: field 'annotations.result' has no brushlabels region with "
                                 "original_width/original_height; paint the image or skip the task")
            url = next((v for k, v in data.items() if k == "image"), None) or next(
                (v for v in data.values() if isinstance(v, str) and ("/" in v or "." in v)), "")
            ref = _image_ref(url) if isinstance(url, str) else ""
            key = data.get("fcn_label_key") if isinstance(data.get("fcn_label_key"), str) else \
                PurePosixPath(ref).with_suffix("").as_posix() or f"task_{tid}"
            if key in entries:
                problems.append(f"{where}: second task for {key!r}; the later one is used")
            img = Path(ref) if ref and Path(ref).is_file() else None
            entries[key] = Entry(key, img, size[0], size[1], (task, ann, where), where, ref)
        except Exception as e:  # the per-task boundary: one odd task is one line, the rest goes on
            problems.append(failure_message(where, e))
    names = names or sorted(found)
    index = {n: i for i, n in enumerate(names)}
    for e in entries.values():
        task, ann, where = e.load
        e.load = (lambda t=task, a=ann, wh=where: _task_mask(t, a, index, ignore_index, wh))
    if not entries:
        first = (problems + notes)[:1]
        raise InputError(f"{path}: no annotated tasks with brush masks" + (f" ({first[0]})" if first else ""))
    return Corrections("labelstudio", path, names, entries, problems, ignore_index, notes)


pairs, ground_truth = layout_functions(read)
