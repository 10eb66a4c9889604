"""predictions.csv, predictions.json and failures.csv, always assembled from the per-image records.

So a killed and resumed job ends with the same files as one that ran through.
"""

from __future__ import annotations

import json
from typing import Sequence

import pandas as pd

from ..guard import guarded
from ..images import write_csv_atomic, write_text_atomic
from .discover import Item
from .layout import OutputLayout

PREDICTION_COLUMNS = ["path", "mask", "width", "height", "seconds", "classes", "mean_confidence",
                      "low_confidence_fraction"]


def _read_record(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def load_records(layout: OutputLayout, items: Sequence[Item]) -> list[tuple[Item, dict]]:
    """Finished images' records; a damaged one is left out (the image is predicted again next time)."""
    recs = []
    for it in items:
        p = layout.record(it.rel)
        if p.is_file() and layout.mask(it.rel).is_file():
            rec, err = guarded(p, _read_record, p)
            if err is None:
                recs.append((it, rec))
    return recs


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
    """predictions.csv, predictions.json (with ``coco``) and failures.csv from all finished records."""
    recs = load_records(layout, items)
    gt_cols = gt or any("gt" in r for _, r in recs)
    write_csv_atomic(predictions_frame(recs, classes, gt_cols), layout.predictions_csv)
    if coco:
        write_text_atomic(layout.predictions_json, json.dumps(coco_results(recs, classes, model_name)))
    write_csv_atomic(pd.DataFrame(list(failed), columns=["path", "reason"], dtype=object), layout.failures_csv)
