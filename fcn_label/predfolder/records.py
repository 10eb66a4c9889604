"""The record store: append-only segment files of JSON lines, one segment per writer process.

One small JSON file per image cost about a millisecond each to open and parse, so a
million-image job spent most of its resume scan and report assembly in the file system.
Now each process appends one complete line per finished image (or failed input) to its own
segment, ``OUT/.fcn-label/records/<time>-<host>-<pid>-<token>.jsonl`` (failures under
``failures/``), with a single ``os.write`` on an ``O_APPEND`` descriptor, after the mask was
renamed into place: a line implies a finished mask. A kill -9 can only leave a torn last line
(no newline): readers ignore it, so that image is redone.

Segments are read in name order (the name starts with the writer's start time), lines in file
order, and the last valid line for an image wins, so duplicates (an --overwrite run, two runs
on one folder) resolve the same way for every reader. Failure lines are ``{"path", "stage",
"reason"}`` (lines of format version 1 have no stage: read as "predict").
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..images import HOST
from .layout import OutputLayout

SEGMENT_SUFFIX = ".jsonl"
_CHUNK = 1 << 20


def shown(s: str) -> str:
    """``s`` as valid UTF-8 text: bytes of a non-UTF-8 file name (held as surrogates) become ``\\xNN``.

    Records, reports and output names use this, so one such name cannot stop the CSV and JSON
    from being written.
    """
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def segment_name() -> str:
    """Sortable by start time; unique per process (host, pid and a random token)."""
    return f"{time.time_ns():016x}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"


class SegmentWriter:
    """Appends whole lines to one segment; opened on the first line (``check`` vets its folder)."""

    def __init__(self, folder: Path, check: Callable[[Path], Path] = lambda p: p):
        self.folder, self.check = folder, check
        self.path: Path | None = None
        self._fd: int | None = None
        self._torn = False  # a write stopped part-way (disk full): start the next line on a fresh one
        self._lock = threading.Lock()

    def append(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                path = self.check(self.folder / segment_name())
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                self.path = path
            if self._torn:
                data = b"\n" + data
            self._torn = True
            n = os.write(self._fd, data)  # one write: a reader sees the whole line or none of it (or a torn tail)
            if n != len(data):
                import errno

                raise OSError(errno.ENOSPC, "No space left on device (short write)", str(self.path))
            self._torn = False

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def segments(folder: Path) -> list[Path]:
    """The segment files in ``folder``, in name (start-time) order."""
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if e.name.endswith(SEGMENT_SUFFIX) and not e.name.startswith(".")
                           and e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in names]


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for every complete line (a torn last one, without its newline, is left out)."""
    with open(path, "rb", buffering=_CHUNK) as f:
        off = 0
        for line in f:
            n = len(line)
            if line.endswith(b"\n"):
                yield off, line
            off += n


def read_at(f, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def check_record(rec) -> None:
    """Raise unless ``rec`` has every field the reports read, with the right types.

    A record that parses but lacks a field (a fuzzed or hand-edited one) would
    otherwise break the report assembly for every image.
    """
    if not isinstance(rec, dict):
        raise ValueError("not an object")
    for k, t in (("path", str), ("file_name", str), ("width", int), ("height", int), ("seconds", (int, float)),
                 ("classes", dict), ("mean_confidence", (int, float)), ("low_confidence_fraction", (int, float))):
        if not isinstance(rec.get(k), t):
            raise ValueError(f"field {k}")
    if not rec["file_name"].endswith(".png"):
        raise ValueError("field file_name")
    if not all(isinstance(v, (int, float)) for v in rec["classes"].values()):
        raise ValueError("field classes")
    anns = rec.get("annotations", [])
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise ValueError("field annotations")
    g = rec.get("gt", {})
    if not isinstance(g, dict) or (g and "error" not in g and not (
            isinstance(g.get("pixel_accuracy"), (int, float)) and isinstance(g.get("mean_iou"), (int, float))
            and isinstance(g.get("iou"), list))):
        raise ValueError("field gt")


_ANNS = b', "annotations": ['
_FIRST = b'[{"category_id": '
ANN_SEP = b'}, {"category_id": '


def split_line(line: bytes) -> tuple[dict, bytes | None]:
    """``(record, raw annotations)``: a line written with "annotations" last is parsed without them
    (the run-length counts are most of its bytes), and their JSON text is returned as written, for
    predictions.json to copy; any other line is parsed whole (``raw`` None).

    ``"annotations": [`` with an unescaped quote cannot occur inside a JSON string, so the last
    one is the key; its list holds dicts that start with "category_id" (outputs.coco_annotations).
    """
    if line.endswith(b"]}\n"):
        k = line.rfind(_ANNS)
        if k > 0:
            raw = line[k + len(_ANNS) - 1: -2]
            if raw == b"[]" or (raw.startswith(_FIRST) and raw.endswith(b"}]")):
                return json.loads(line[:k] + b"}"), raw
    return json.loads(line), None


def parse_record(line: bytes) -> tuple[dict, bytes | None]:
    rec, raw = split_line(line)
    check_record(rec)
    return rec, raw


def full_record(rec: dict, raw: bytes | None) -> dict:
    if raw is not None:
        rec["annotations"] = json.loads(raw)
    return rec


MAX_OPEN = 64  # segments held open while the reports are streamed
NONE = -1


@dataclass
class RecordIndex:
    """Where each item's record is: compact arrays in item order, so a million images cost megabytes.

    ``seg[i]`` is an index into ``paths`` (or NONE); ``off`` / ``length`` the line's bytes.
    """

    layout: OutputLayout
    rels: Sequence[str]
    paths: list[Path] = field(default_factory=list)
    seg: np.ndarray = None
    off: np.ndarray = None
    length: np.ndarray = None
    has_gt: bool = False

    def done(self, i: int) -> bool:
        return self.seg[i] != NONE

    @property
    def count(self) -> int:
        return int((self.seg != NONE).sum())

    def records(self) -> Iterator[tuple[int, dict, bytes | None]]:
        """``(item index, record, raw annotations)`` in item order (see :func:`split_line`), each read
        again from its segment (streaming)."""
        files: dict[int, object] = {}
        try:
            for i in np.nonzero(self.seg != NONE)[0]:
                s = int(self.seg[i])
                f = files.get(s)
                if f is None:
                    if len(files) >= MAX_OPEN:  # shards interleave items, so keep segments open, within limits
                        for g in files.values():
                            g.close()
                        files.clear()
                    f = files[s] = open(self.paths[s], "rb")
                yield (int(i), *split_line(read_at(f, int(self.off[i]), int(self.length[i]))))
        finally:
            for g in files.values():
                g.close()


def scan_records(layout: OutputLayout, rels: Sequence[str]) -> RecordIndex:
    """Index the valid records of ``rels`` in every segment; one sequential read.

    A line that is not a valid record is skipped, so its image counts as not done and is redone
    (a later line for it wins).
    """
    n = len(rels)
    pos = {r: i for i, r in enumerate(rels)}
    idx = RecordIndex(layout, rels, seg=np.full(n, NONE, np.int32), off=np.zeros(n, np.int64),
                      length=np.zeros(n, np.int32))
    folder = layout.records_dir
    for s, path in enumerate(segments(folder)):
        idx.paths.append(path)
        for off, line in iter_lines(path):
            try:
                rec, _ = parse_record(line)
            except Exception:
                continue
            i = pos.get(rec["file_name"][:-4])
            if i is None:
                continue
            idx.seg[i], idx.off[i], idx.length[i] = s, off, len(line)
            if "gt" in rec:
                idx.has_gt = True
    return idx


def iter_segment_records(layout: OutputLayout) -> Iterator[tuple[str, int, bytes | None]]:
    """``(segment path, line number, line)`` of every complete line, for readers that report bad ones."""
    for path in segments(layout.records_dir):
        for k, (_, line) in enumerate(iter_lines(path), 1):
            yield str(path), k, line


def read_failures(layout: OutputLayout) -> dict[str, tuple[str, str]]:
    """path -> (stage, reason) of every recorded failure (last line wins)."""
    out: dict[str, tuple[str, str]] = {}
    for path in segments(layout.failures_dir):
        for _, line in iter_lines(path):
            try:
                d = json.loads(line)
                out[str(d["path"])] = (str(d.get("stage", "predict")), str(d["reason"]))
            except Exception:  # a damaged line: its shard retries the input next time anyway
                continue
    return out
