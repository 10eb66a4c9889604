"""predictions.csv, predictions.json and failures.csv, always assembled from the records.

So a killed and resumed job ends with the same files as one that ran through. The reports
are streamed in discovered item order (whichever process wrote a record, the bytes are the
same): a :class:`~.records.RecordIndex` says where each record is, then each is read again,
written out and dropped, so a million images need megabytes, not the tens of gigabytes of
holding every record, the annotations list and one JSON string.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import pandas as pd

from ..guard import Failure, write_failures_csv
from ..images import HOST, atomic_path
from .layout import OutputLayout
from .records import ANN_SEP, RecordIndex, check_record, full_record, read_failures, scan_records, shown


class Item(Protocol):
    """An input and its output name (``predict.discover.Item`` is one)."""

    path: os.PathLike
    rel: str  # output path relative to --out, without suffix

__all__ = ["PREDICTION_COLUMNS", "check_record", "load_records", "other_failures", "reports_lock",
           "predictions_frame", "coco_results", "write_reports"]

PREDICTION_COLUMNS = ["path", "mask", "width", "height", "seconds", "classes", "mean_confidence",
                      "low_confidence_fraction"]
CHUNK_ROWS = 20_000  # CSV rows per pandas frame while streaming


def load_records(layout: OutputLayout, items: Sequence[Item]) -> list[tuple[Item, dict]]:
    """Finished images' records in item order (all in memory: for small jobs and tests; reports stream)."""
    idx = scan_records(layout, [it.rel for it in items])
    return [(items[i], full_record(rec, raw)) for i, rec, raw in idx.records()]


def other_failures(layout: OutputLayout, items: Sequence[Item], failed: Sequence[Failure],
                   done) -> list[Failure]:
    """Failure records of inputs this run did not report (other shards, earlier runs) that are not done since.

    ``done(i, item)`` says whether item ``i`` has a record (a later success supersedes a failure)."""
    recorded = read_failures(layout)
    if not recorded:
        return []
    mine = {f.path for f in failed}
    rows = []
    for i, it in enumerate(items):
        path = shown(str(it.path))
        if path in recorded and path not in mine and not done(i, it):
            rows.append(Failure(path, *recorded[path]))
    return rows


@contextmanager
def reports_lock(layout: OutputLayout) -> Iterator[None]:
    """An exclusive flock on OUT/.fcn-label/reports.lock while one shard assembles the reports (POSIX;
    elsewhere no lock), so shards finishing together cannot interleave and the last one sees every record."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    layout.reports_lock.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.reports_lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _header(classes: Sequence[str], gt_cols: bool) -> list[str]:
    header = list(PREDICTION_COLUMNS)
    if gt_cols:
        header += ["pixel_accuracy", "mean_iou"] + [f"iou_{c}" for c in classes] + ["gt_error"]
    return header


def _row(r: dict, classes: Sequence[str], gt_cols: bool) -> list:
    row = [r["path"], r["file_name"], r["width"], r["height"], r["seconds"],
           ";".join(f"{k}:{v:.4f}" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])),
           r["mean_confidence"], r["low_confidence_fraction"]]
    if gt_cols:
        g = r.get("gt", {})
        if "error" in g or not g:
            row += [""] * (2 + len(classes)) + [g.get("error", "no ground truth")]
        else:
            row += [round(g["pixel_accuracy"], 6), round(g["mean_iou"], 6)]
            row += ["" if v is None else round(v, 6) for v in g["iou"]] + [""]
    return row


def predictions_frame(recs: list[tuple[Item, dict]], classes: Sequence[str], gt_cols: bool) -> pd.DataFrame:
    # object: each value written as Python writes it
    return pd.DataFrame([_row(r, classes, gt_cols) for _, r in recs], columns=_header(classes, gt_cols), dtype=object)


def coco_results(recs: list[tuple[Item, dict]], classes: Sequence[str], model_name: str) -> dict:
    images, anns = [], []
    for image_id, (it, r) in enumerate(recs, 1):
        images.append({"id": image_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
        for a in r.get("annotations", []):
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    # annotations before images: streamed, the bulk goes straight to the file and only the small image
    # entries wait in a spool (a million 480x360 frames: 7.7 GB of annotations, 0.1 GB of images)
    return {
        "info": {"description": "fcn-label predictions", "model": model_name},
        "categories": _categories(classes),
        "annotations": anns,
        "images": images,
    }


def _categories(classes: Sequence[str]) -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)]


class _CsvStream:
    """predictions.csv through pandas (the one CSV writer) a chunk of rows at a time."""

    def __init__(self, f, header: list[str]):
        self.f, self.header, self.rows, self.first = f, header, [], True

    def add(self, row: list) -> None:
        self.rows.append(row)
        if len(self.rows) >= CHUNK_ROWS:
            self.flush()

    def flush(self, final: bool = False) -> None:
        if self.rows or (final and self.first):
            pd.DataFrame(self.rows, columns=self.header, dtype=object).to_csv(
                self.f, index=False, header=self.first, lineterminator="\n", na_rep="")
            self.first, self.rows = False, []


class _CocoStream:
    """predictions.json written as ``json.dumps`` of :func:`coco_results` would, byte for byte, without
    holding it: annotations go straight to the file, image entries to a spool beside it, appended at the end."""

    def __init__(self, f, spool, classes: Sequence[str], model_name: str):
        self.f, self.spool = f, spool
        self.n_images = self.n_anns = 0
        f.write('{"info": ' + json.dumps({"description": "fcn-label predictions", "model": model_name})
                + ', "categories": ' + json.dumps(_categories(classes)) + ', "annotations": [')

    def add(self, r: dict, raw: bytes | None = None) -> None:
        self.n_images += 1
        image_id = self.n_images
        self.spool.write((", " if image_id > 1 else "") + json.dumps(
            {"id": image_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"]}))
        parts = []
        if raw is not None:  # the record's own JSON text of each annotation: what json.dumps(a) gives
            if raw != b"[]":
                texts = raw[len(b"[{"):-len(b"}]")].decode("utf-8").split(ANN_SEP.decode())
                for k, text in enumerate(texts):  # each split off its leading '"category_id": '
                    self.n_anns += 1
                    parts.append(f'{{"id": {self.n_anns}, "image_id": {image_id}, '
                                 + (text if k == 0 else '"category_id": ' + text) + "}")
            if parts:
                self.f.write((", " if self.n_anns > len(parts) else "") + ", ".join(parts))
            return
        for a in r.get("annotations", []):
            self.n_anns += 1
            if a and "id" not in a and "image_id" not in a:
                parts.append(f'{{"id": {self.n_anns}, "image_id": {image_id}, ' + json.dumps(a)[1:])
            else:
                parts.append(json.dumps({"id": self.n_anns, "image_id": image_id, **a}))
        if parts:
            self.f.write((", " if self.n_anns > len(parts) else "") + ", ".join(parts))

    def finish(self) -> None:
        self.f.write('], "images": [')
        self.spool.seek(0)
        while True:
            block = self.spool.read(1 << 20)
            if not block:
                break
            self.f.write(block)
        self.f.write("]}")


def write_reports(layout: OutputLayout, items: Sequence[Item], failed: Sequence[Failure],
                  classes: Sequence[str], *, coco: bool, gt: bool, model_name: str,
                  index: RecordIndex | None = None) -> None:
    """predictions.csv, predictions.json (with ``coco``) and failures.csv from all finished records, and
    failures.csv also from every shard's failure records."""
    idx = index if index is not None else scan_records(layout, [it.rel for it in items])
    gt_cols = gt or idx.has_gt
    with atomic_path(layout.predictions_csv) as csv_tmp, \
            open(csv_tmp, "w", encoding="utf-8", newline="") as cf, \
            _json_target(layout, coco) as (jf, spool):
        rows = _CsvStream(cf, _header(classes, gt_cols))
        js = _CocoStream(jf, spool, classes, model_name) if coco else None
        for _, rec, raw in idx.records():
            rows.add(_row(rec, classes, gt_cols))
            if js is not None:
                js.add(rec, raw)
        rows.flush(final=True)
        if js is not None:
            js.finish()
    write_failures_csv(layout.failures_csv, list(failed) + other_failures(layout, items, failed,
                                                                          lambda i, it: idx.done(i)))


@contextmanager
def _json_target(layout: OutputLayout, coco: bool):
    """The temp file predictions.json is written to (renamed over it on success) and the spool of image entries."""
    if not coco:
        yield None, None
        return
    with atomic_path(layout.predictions_json) as tmp, open(tmp, "w", encoding="utf-8", newline="") as jf, \
            _spool(tmp) as spool:
        yield jf, spool


@contextmanager
def _spool(beside: Path):
    # named like atomic_path's temp files, so a killed run's spool is removed by remove_stale_temp
    fd, name = tempfile.mkstemp(prefix=".predictions.spool.", suffix=f".{HOST}~{os.getpid()}.tmp",
                                dir=Path(beside).parent)
    try:
        with os.fdopen(fd, "w+", encoding="utf-8", newline="") as f:
            yield f
    finally:
        Path(name).unlink(missing_ok=True)
