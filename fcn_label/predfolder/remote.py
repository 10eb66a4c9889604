"""A prediction folder on an object store (predict's --out as an ``s3://``, ``gs://``, ``az://`` URL).

The layout and every byte are the local folder's (:mod:`.layout`); what differs is how it is
written, because an object store has no rename, no append and no lock:

* each output is one whole object (one PUT: a reader sees all of it or none), never temp + rename;
* the record store writes immutable segment objects,
  ``.fcn-label/records/<time>-<host>-<pid>-<token>-<seq>.jsonl`` (failures under ``failures/``):
  a writer buffers the lines of images whose outputs are already written and puts them as the next
  segment every :data:`FLUSH_LINES` lines or :data:`FLUSH_SECONDS` seconds (checked as lines arrive)
  and at close. A kill -9 loses at most the buffered lines: those images have no record, so the
  re-run redoes them, writing the same bytes over the same keys. A re-run trusts only records;
* the resume scan and the reports read the segments through a local mirror (:meth:`RemoteOut.sync`,
  in a temporary folder of this machine, removed at the end): the same code as for a local folder
  reads them, so the reports are the same bytes; they are written there and each uploaded as one
  object (a multipart upload for a large one, visible only when complete);
* reports without a lock (the *re-scan rule*): a shard that wrote the reports lists the segments
  again, and if the set changed since the listing its reports were made from, it makes and uploads
  them again, until a listing after its upload shows nothing new. Every shard puts all its segments
  before it makes its first reports, so the shard whose upload is the last one re-listed after it,
  saw every shard's segments and found the set unchanged: the reports that stay were made from all
  the records.
* every key written is checked to lie under --out (no '..', no absolute part); there is no stale
  temporary file to clean up, since nothing is written under a temporary name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InputError
from ..images import HOST, writer_gone
from ..storage import Store, StorageError, explain, open_store, shown_url
from .layout import FAILURES_CSV, FAILURES_DIR, FORMAT_FILE, PREDICTIONS_CSV, PREDICTIONS_JSON, RECORDS_DIR, \
    OutputLayout
from .records import SEGMENT_SUFFIX, segment_name
from .version import format_text, read_version

# A segment object is put every FLUSH_LINES lines or once FLUSH_SECONDS have passed since its first
# line, whichever comes first (a million images: a few thousand segments, listed in a few requests).
# FCN_LABEL_SEGMENT_LINES overrides the count (tests use it to have segments put mid-job).
FLUSH_LINES = int(os.environ.get("FCN_LABEL_SEGMENT_LINES", "256"))
FLUSH_SECONDS = 10.0

# The local mirror: <tmp>/fcn-label-mirror.<host>~<pid>.<random>, so a later run can remove what a killed
# one left (a million-image job's mirror holds gigabytes of segments and reports).
MIRROR_PREFIX = "fcn-label-mirror."
_MIRROR_RE = re.compile(r"^fcn-label-mirror\.(?P<host>[A-Za-z0-9-]*)~(?P<pid>\d+)\.")


def new_mirror() -> Path:
    """A fresh local folder for the mirror of a remote --out, after removing the mirrors that killed runs
    of this host left in the temporary folder."""
    tmp = Path(tempfile.gettempdir())
    try:
        for d in tmp.glob(MIRROR_PREFIX + "*"):
            m = _MIRROR_RE.match(d.name)
            if m and d.is_dir() and writer_gone(m["host"], int(m["pid"])):
                shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"{MIRROR_PREFIX}{HOST}~{os.getpid()}.", dir=tmp))


class ObjectSegmentWriter:
    """:class:`~.records.SegmentWriter`'s job on an object store: lines buffered, put as immutable
    numbered segment objects. Nothing is opened before the first line (a sink stays cheap to copy)."""

    def __init__(self, out: "RemoteOut", folder: str):
        self.out, self.folder = out, folder
        self.stem: str | None = None
        self.seq = 0
        self.lines: list[bytes] = []
        self.first = 0.0
        self._lock = threading.Lock()

    def append(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode("utf-8")
        with self._lock:
            if not self.lines:
                self.first = time.monotonic()
            self.lines.append(data)
            if len(self.lines) >= FLUSH_LINES or time.monotonic() - self.first >= FLUSH_SECONDS:
                self._flush()

    def _flush(self) -> None:
        if not self.lines:
            return
        if self.stem is None:
            self.stem = segment_name()[: -len(SEGMENT_SUFFIX)]
        self.seq += 1
        name = f"{self.folder}/{self.stem}-{self.seq:06d}{SEGMENT_SUFFIX}"
        self.out.put(name, b"".join(self.lines))  # raises: the lines stay, for the next try
        self.lines = []

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def close(self) -> None:
        self.flush()


class RemoteOut:
    """--out on an object store: checked keys, whole-object writes, segments, the format claim, and the
    local mirror of the segments the reports are made from."""

    def __init__(self, url: str):
        self.url = url
        self.store: Store = open_store(url)

    def __repr__(self) -> str:
        return f"RemoteOut({shown_url(self.url)!r})"

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def key(self, rel: str) -> str:
        """``rel`` if it names an object under --out, else the one-line refusal (never outside --out)."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"{rel}: would be written outside --out {self.shown}; this is a bug, please report it")
        return rel

    def put(self, rel: str, data: bytes) -> None:
        self.store.write_bytes(self.key(rel), data)

    def segment_writer(self, folder: str) -> ObjectSegmentWriter:
        return ObjectSegmentWriter(self, folder)

    # -- format version -------------------------------------------------------
    def open_folder(self) -> None:
        """Refuse a prefix of a format this version cannot continue, and claim it (format.json): as
        :mod:`.version` does for a local folder, with its messages."""
        try:
            raw = self.store.read_bytes(FORMAT_FILE) if self.store.isfile(FORMAT_FILE) else None
            early = raw is None and any(not n.startswith(".") and not n.endswith(SEGMENT_SUFFIX)
                                        for sub in (RECORDS_DIR, FAILURES_DIR) for n in self.store.list_names(sub))
        except Exception as e:  # noqa: BLE001 - the store's own errors
            raise StorageError("--out " + explain(self.url, e, "reading")) from None
        if raw is not None:
            read_version(raw, self.store.url_of(FORMAT_FILE), self.shown)
            return
        if early:
            raise InputError(f"{self.shown}: written by an early fcn-label (per-file records in {RECORDS_DIR}); "
                             "re-run predict with this version into a new --out")
        try:
            self.put(FORMAT_FILE, format_text().encode())
        except Exception as e:  # noqa: BLE001
            raise StorageError("--out " + explain(self.url, e, "writing")) from None

    # -- the local mirror ------------------------------------------------------
    def sync(self, mirror: OutputLayout) -> frozenset[str]:
        """Download the record and failure segments not yet in ``mirror`` (a local folder laid out as the
        prediction folder); return the names of all of them (segments are immutable: a name is enough)."""
        names: set[str] = set()
        pairs = []
        for sub, local in ((RECORDS_DIR, mirror.records_dir), (FAILURES_DIR, mirror.failures_dir)):
            local.mkdir(parents=True, exist_ok=True)
            for name in self.store.list_names(sub):
                if not name.endswith(SEGMENT_SUFFIX) or name.startswith("."):
                    continue
                names.add(f"{sub}/{name}")
                if not (local / name).exists():
                    pairs.append((f"{sub}/{name}", str(local / f".{name}.part")))
        if pairs:
            self.store.get_batch(pairs)  # segment names hold no pattern characters
            for _, tmp in pairs:
                p = Path(tmp)
                p.rename(p.with_name(p.name[1: -len(".part")]))
        return frozenset(names)

    def publish(self, mirror: OutputLayout, coco: bool) -> None:
        """Upload the reports written in ``mirror``, each as one object."""
        for name, there in ((PREDICTIONS_CSV, True), (PREDICTIONS_JSON, coco), (FAILURES_CSV, True)):
            if there:
                self.store.put_file(mirror.out / name, self.key(name))
