"""predictions.csv, predictions.json and failures.csv, always assembled from the per-image records.

So a killed and resumed job ends with the same files as one that ran through.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from ..guard import guarded
from ..images import write_csv_atomic, write_text_atomic
from .discover import Item, shown
from .layout import OutputLayout

PREDICTION_COLUMNS = ["path", "mask", "width", "height", "seconds", "classes", "mean_confidence",
                      "low_confidence_fraction"]


def check_record(rec) -> None:
    """Raise unless ``rec`` has every field the reports read, with the right types.

    A record that parses but lacks a field (a fuzzed or hand-edited file) would
    otherwise break the report assembly for every image.
    """
    if not isinstance(rec, dict):
        raise ValueError("not an object")
    for k, t in (("path", str), ("file_name", str), ("width", int), ("height", int), ("seconds", (int, float)),
                 ("classes", dict), ("mean_confidence", (int, float)), ("low_confidence_fraction", (int, float))):
        if not isinstance(rec.get(k), t):
            raise ValueError(f"field {k}")
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


def _read_record(path) -> dict:
    rec = json.loads(path.read_text(encoding="utf-8"))
    check_record(rec)
    return rec


def load_records(layout: OutputLayout, items: Sequence[Item]) -> list[tuple[Item, dict]]:
    """Finished images' records; a damaged one is removed, so the image counts as not done and is redone."""
    recs = []
    for it in items:
        p = layout.record(it.rel)
        if p.is_file() and layout.mask(it.rel).is_file():
            rec, err = guarded(p, _read_record, p)
            if err is None:
                recs.append((it, rec))
            else:
                p.unlink(missing_ok=True)
    return recs


def _read_failure(path: Path) -> tuple[str, str]:
    d = json.loads(path.read_text(encoding="utf-8"))
    return str(d["path"]), str(d["reason"])


def other_failures(layout: OutputLayout, items: Sequence[Item], failed: Sequence[tuple[str, str]],
                   done: set[str]) -> list[tuple[str, str]]:
    """Failure records of inputs this run did not report (other shards, earlier runs) that are not done since."""
    mine = {p for p, _ in failed}
    rows = []
    for it in items:
        path = shown(str(it.path))
        if it.rel in done or path in mine or not layout.failure(path).is_file():
            continue
        row, err = guarded(layout.failure(path), _read_failure, layout.failure(path))
        if err is None:  # a damaged record: its shard retries the input next time anyway
            rows.append(row)
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


def predictions_frame(recs: list[tuple[Item, dict]], classes: Sequence[str], gt_cols: bool) -> pd.DataFrame:
    header = list(PREDICTION_COLUMNS)
    if gt_cols:
        header += ["pixel_accuracy", "mean_iou"] + [f"iou_{c}" for c in classes] + ["gt_error"]
    rows = []
    for _, r in recs:
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
        rows.append(row)
    return pd.DataFrame(rows, columns=header, dtype=object)  # object: each value written as Python writes it


def coco_results(recs: list[tuple[Item, dict]], classes: Sequence[str], model_name: str) -> dict:
    images, anns = [], []
    for image_id, (it, r) in enumerate(recs, 1):
        images.append({"id": image_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
        for a in r.get("annotations", []):
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    return {
        "info": {"description": "fcn-label predictions", "model": model_name},
        "images": images,
        "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)],
        "annotations": anns,
    }


def write_reports(layout: OutputLayout, items: Sequence[Item], failed: Sequence[tuple[str, str]],
                  classes: Sequence[str], *, coco: bool, gt: bool, model_name: str) -> None:
    """predictions.csv, predictions.json (with ``coco``) and failures.csv from all finished records, and
    failures.csv also from every shard's failure records."""
    recs = load_records(layout, items)
    gt_cols = gt or any("gt" in r for _, r in recs)
    write_csv_atomic(predictions_frame(recs, classes, gt_cols), layout.predictions_csv)
    if coco:
        write_text_atomic(layout.predictions_json, json.dumps(coco_results(recs, classes, model_name)))
    rows = list(failed) + other_failures(layout, items, failed, {it.rel for it, _ in recs})
    write_csv_atomic(pd.DataFrame(rows, columns=["path", "reason"], dtype=object), layout.failures_csv)
