"""Where predict's per-image host time goes, stage by stage, on one thread.

    python benchmarks/host_profile.py [--images 24] [--rounds 3] [--size 360x480]

For CamVid val frames (PNG, and the same frames re-encoded as JPEG quality 92) it times each
host stage of ``predict`` on real logits of the shipped model (computed once, not timed):
decode (PNG with read_image's decoder and with Pillow alone, JPEG), preprocess (to a normalised
tensor; next to its baseline from before the lookup table, timed in the same loop, as are COCO
RLE's and the labels'), labels and confidences from the logits, palette PNG encode,
per-class statistics, COCO RLE of all classes, the record (json + atomic write), the mask
file write, the whole of Sink.write (to check the sum), and the reports
(predictions.csv/.json/failures.csv) amortised per image. Every stage is the mean over the
images of one round; the figure is the best round, so a busy neighbour inflates a round, not
a stage. One thread (torch and the stages alike): the figure is the cost per core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fcn_label.images import read_image, write_bytes_atomic, write_text_atomic  # noqa: E402
from fcn_label import images  # noqa: E402

# read_image's PNG decoder here: libspng where the optional png extra is installed
PNG_DECODER = " (libspng)" if importlib.util.find_spec("pyspng") else " (Pillow)"
from fcn_label.predict import Item, JobResult, PredictJob, PredictOptions  # noqa: E402
from fcn_label.predfolder import outputs as outputs_mod  # noqa: E402
from fcn_label.predfolder.outputs import coco_annotations, encode_png  # noqa: E402
from fcn_label.predict import Predictor  # noqa: E402
from fcn_label.predict.predictor import Prediction, labels_and_confidence  # noqa: E402
from fcn_label.checkpoint import SHIPPED, load_checkpoint  # noqa: E402

CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"


def _preprocess_before(pred: Predictor, images) -> torch.Tensor:
    """Predictor.preprocess before the lookup table (the baseline of its row)."""
    x = pred.norm.apply(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    return x.contiguous(memory_format=torch.channels_last)


def _coco_before(labels: np.ndarray, confidence: np.ndarray, n_cls: int) -> None:
    """coco_annotations' work before it cut the label map into runs once (the baseline of its row):
    one transpose, then a mask, an encode and a masked confidence mean per present class."""
    from pycocotools import mask as mask_utils

    labels_f = np.asfortranarray(labels)
    for c in np.nonzero(np.bincount(labels.ravel(), minlength=n_cls))[0]:
        m = labels_f == c
        rle = mask_utils.encode(m.view(np.uint8))
        mask_utils.area(rle), mask_utils.toBbox(rle), float(confidence[m].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="360x480", help="HxW the frames are resized to")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in a.size.lower().split("x"))
    ck = load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path)
    pred = Predictor(ck, device="cpu")
    rows = [line.split()[0] for line in (CAMVID / "val.txt").read_text().splitlines() if line.strip()]
    rows = [rows[int(i * len(rows) / a.images)] for i in range(min(a.images, len(rows)))]
    tmp = Path(tempfile.mkdtemp(prefix="fcn-host-profile-"))
    src = tmp / "in"
    src.mkdir()
    pngs, jpgs = [], []
    for i, rel in enumerate(rows):
        im = Image.open(CAMVID / rel).convert("RGB")
        im = im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)
        im.save(src / f"{i:04d}.png")
        im.save(src / f"{i:04d}.jpg", quality=92)
        pngs.append(src / f"{i:04d}.png")
        jpgs.append(src / f"{i:04d}.jpg")
    arrays = [read_image(p) for p in pngs]
    with torch.inference_mode():
        logits = [pred.model(pred.preprocess([x])) for x in arrays]
    out = tmp / "out"
    job = PredictJob(pred, PredictOptions(out=out))
    items = [Item(p, p.stem) for p in pngs]
    n_cls = len(job.classes)

    best: dict[str, float] = {}
    for r in range(a.rounds):
        t_stage: dict[str, float] = {}

        def add(name: str, dt: float) -> None:
            t_stage[name] = t_stage.get(name, 0.0) + dt

        for i, (png, jpg) in enumerate(zip(pngs, jpgs)):
            spng, images._spng = images._spng, False
            t = time.perf_counter(); read_image(png); add("decode PNG, Pillow alone", time.perf_counter() - t)
            images._spng = spng
            t = time.perf_counter(); read_image(png); add(f"decode PNG{PNG_DECODER}", time.perf_counter() - t)
            t = time.perf_counter(); read_image(jpg); add("decode JPEG (q92)", time.perf_counter() - t)
            t = time.perf_counter(); _preprocess_before(pred, [arrays[i]]); add("preprocess, before (torch ops, 4 temporaries)", time.perf_counter() - t)
            t = time.perf_counter(); pred.preprocess([arrays[i]]); add("preprocess (to normalised tensor)", time.perf_counter() - t)
            with torch.inference_mode():
                t = time.perf_counter()
                pred.postprocess(torch.softmax(logits[i].float(), dim=1))
                add("labels + confidence, before (torch softmax, max)", time.perf_counter() - t)
                t = time.perf_counter()
                p = Prediction(*labels_and_confidence(logits[i][0].float().numpy()))
                add("labels + confidence (from the logits, NumPy)", time.perf_counter() - t)
            level, outputs_mod.PNG_COMPRESS_LEVEL = outputs_mod.PNG_COMPRESS_LEVEL, 6
            t = time.perf_counter(); encode_png(p.labels, job.palette); add("palette PNG encode, before (zlib level 6)", time.perf_counter() - t)
            outputs_mod.PNG_COMPRESS_LEVEL = level
            t = time.perf_counter(); data = encode_png(p.labels, job.palette); add(f"palette PNG encode (zlib level {level})", time.perf_counter() - t)
            t = time.perf_counter()
            counts = np.bincount(p.labels.ravel(), minlength=n_cls)
            stats = (float(p.confidence.mean()), float((p.confidence < 0.5).mean()))
            add("class stats (bincount, confidence means)", time.perf_counter() - t)
            t = time.perf_counter(); _coco_before(p.labels, p.confidence, n_cls); add("COCO RLE, before (a mask, encode, mean per class)", time.perf_counter() - t)
            t = time.perf_counter(); anns = coco_annotations(p.labels, p.confidence, n_cls); add("COCO RLE (all classes)", time.perf_counter() - t)
            t = time.perf_counter()
            rec = {"path": str(png), "classes": {str(c): int(counts[c]) for c in np.nonzero(counts)[0]}, "stats": stats,
                   "annotations": anns}
            write_text_atomic(tmp / "rec.json", json.dumps(rec))
            add("record (json.dumps + atomic write)", time.perf_counter() - t)
            t = time.perf_counter(); write_bytes_atomic(tmp / "mask.png", data); add("mask file write (atomic)", time.perf_counter() - t)
            t = time.perf_counter(); job.sink.write(items[i], arrays[i], p, 0.0); add("= Sink.write (all outputs)", time.perf_counter() - t)
        t = time.perf_counter(); job.write_reports(items, JobResult()); add("reports (csv + json), amortised", time.perf_counter() - t)
        for k, v in t_stage.items():
            best[k] = min(best.get(k, float("inf")), v / len(pngs))
        print(f"round {r + 1}/{a.rounds} done", flush=True)

    print(f"\nper image, {h}x{w}, one thread, best of {a.rounds} rounds x {len(pngs)} CamVid val frames")
    print("| stage | ms per image |")
    print("|---|---|")
    for k, v in best.items():
        print(f"| {k} | {1000 * v:.2f} |")
    host = sum(v for k, v in best.items()
               if k.startswith(("decode PNG (", "preprocess (", "labels + confidence (", "= ", "reports")))
    print(f"| **host total with PNG input** (decode PNG{PNG_DECODER} + preprocess + labels + Sink.write + reports) | **{1000 * host:.2f}** "
          f"(= {1 / host:.0f} img/s per core) |")
    if a.json:
        a.json.write_text(json.dumps({k: 1000 * v for k, v in best.items()}, indent=1))


if __name__ == "__main__":
    main()
