"""Test-time augmentation on CamVid val: mean IU of each `--tta` level and its cost, side by side.

    python benchmarks/tta_val.py [--camvid ../shared/data/camvid] [--weights fcn8s-compact-camvid] [--limit N]

Runs the same Predictor over the val images once per level (none, flip, scales) in one process,
scores each with the paper's metrics (label 11 ignored) and times the forward passes with the
CPU otherwise idle as far as the machine allows. Prints a Markdown table; say which machine ran it.
Val is what we select on: these figures choose the level's defaults, they are not test figures.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label.checkpoint import load_checkpoint, resolve_weights  # noqa: E402
from fcn_label.images import read_image  # noqa: E402
from fcn_label.metrics import confusion_matrix, scores  # noqa: E402
from fcn_label.predict import Predictor  # noqa: E402
from fcn_label.choices import TTA_LEVELS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", default=str(Path(__file__).resolve().parents[2] / "shared/data/camvid"))
    ap.add_argument("--weights", default="fcn8s-compact-camvid")
    ap.add_argument("--limit", type=int, default=0, help="first N val images only (0: all)")
    ap.add_argument("--candidates", default="", help="more scale sets to compare, each with flip: "
                    "'0.5,0.75,1,1.25,1.5;0.75,1,1.25,1.5'")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.camvid)
    pairs = [line.split() for line in (root / "val.txt").read_text().splitlines() if line.strip()]
    pairs = pairs[: args.limit] if args.limit else pairs
    images = [read_image(root / a) for a, _ in pairs]
    gts = [np.array(Image.open(root / b)) for _, b in pairs]
    ck = load_checkpoint(resolve_weights(args.weights))
    n, ignore = ck.config.num_classes, ck.ignore_index
    print(f"{len(images)} CamVid val images, {args.weights}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| --tta | views | pixel acc | mean acc | mean IU | f.w. IU | s/image | cost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    levels = dict(TTA_LEVELS)
    for c in filter(None, args.candidates.split(";")):
        levels[f"flip + {c}"] = (True, tuple(float(v) for v in c.split(",")))
    for level, (flip, scales) in levels.items():
        pr = Predictor(ck, device="cpu", flip=flip, scales=scales)
        pr.predict_arrays(images[:1])  # warm-up
        conf = np.zeros((n, n), np.int64)
        t0 = time.perf_counter()
        preds = pr.predict_arrays(images)
        dt = (time.perf_counter() - t0) / len(images)
        for p, g in zip(preds, gts):
            conf += confusion_matrix(g, p.labels, n, ignore)
        s = scores(conf).summary()
        base = base or dt
        views = len(scales) * (2 if flip else 1)
        print(f"| {level} | {views} | {100 * s['pixel_accuracy']:.2f} | {100 * s['mean_accuracy']:.2f} | "
              f"{100 * s['mean_iou']:.2f} | {100 * s['fw_iou']:.2f} | {dt:.3f} | {dt / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
