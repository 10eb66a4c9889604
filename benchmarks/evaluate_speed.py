"""`evaluate` throughput (mask pairs per second) vs a naive per-image NumPy loop.

    python benchmarks/evaluate_speed.py [--pairs N] [--workers 1 2]

Builds N ground-truth / prediction pairs of CamVid-size index PNGs (480x360):
CamVid val labels and a shifted copy when ../shared is present, else synthetic
blobs of 11 classes with an ignore label. Then times, on warm page cache:

* naive loop: PIL open + np.array for both masks, then per class
  tp/fp/fn with boolean masks (the usual hand-written IoU loop);
* evaluate: the library call behind `fcn-label evaluate` (matching, decoding,
  one-bincount confusion, per-image rows), with 1 and more worker threads;
* evaluate + report: the same plus every CSV and both PNGs;
* scoring only (masks already decoded): the naive class loop vs count_pixels.

Both give the same mean IoU (checked). Prints a Markdown table; numbers depend
on the machine and its load, so say which one ran it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label import evaluate as ev  # noqa: E402
from fcn_label.metrics import count_pixels, scores  # noqa: E402

N_CLASSES, IGNORE = 11, 11


def make_pairs(root: Path, n: int) -> tuple[Path, Path, str]:
    src = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "camvid" / "valannot"
    labels = sorted(src.glob("*.png")) if src.is_dir() else []
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        if labels:
            g = np.array(Image.open(labels[i % len(labels)]))
        else:
            g = np.full((360, 480), rng.integers(0, N_CLASSES), np.uint8)
            for _ in range(12):
                y, x = rng.integers(0, 360), rng.integers(0, 480)
                g[y : y + rng.integers(10, 200), x : x + rng.integers(10, 250)] = rng.integers(0, N_CLASSES + 1)
        p = np.roll(g, 4 + i % 8, axis=1)
        p[p == IGNORE] = 0
        Image.fromarray(g).save(gt_dir / f"{i:05d}.png")
        Image.fromarray(p).save(pred_dir / f"{i:05d}.png")
    return gt_dir, pred_dir, "CamVid val labels + shifted copies" if labels else "synthetic blobs"


def naive_pairs(pairs) -> float:
    tp = np.zeros(N_CLASSES)
    fp = np.zeros(N_CLASSES)
    fn = np.zeros(N_CLASSES)
    for g, p in pairs:
        valid = g != IGNORE
        for c in range(N_CLASSES):
            gc, pc = (g == c) & valid, (p == c) & valid
            tp[c] += np.count_nonzero(gc & pc)
            fp[c] += np.count_nonzero(pc & ~gc)
            fn[c] += np.count_nonzero(gc & ~pc)
    union = tp + fp + fn
    return float(np.mean(tp[union > 0] / union[union > 0]))


def naive(gt_dir: Path, pred_dir: Path) -> float:
    return naive_pairs((np.array(Image.open(gp)), np.array(Image.open(pred_dir / gp.name)))
                       for gp in sorted(gt_dir.glob("*.png")))


def pooled(pairs) -> float:
    conf = sum(count_pixels(g, p, N_CLASSES, IGNORE).conf for g, p in pairs)
    return scores(conf).mean_iou


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300, help="mask pairs to build and score")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fcn-eval-bench-") as tmp:
        gt_dir, pred_dir, what = make_pairs(Path(tmp), args.pairs)
        naive(gt_dir, pred_dir)  # warm the page cache
        rows = []
        t, miou_naive = timed(lambda: naive(gt_dir, pred_dir), args.repeat)
        rows.append(("naive per-image NumPy loop", 1, t))
        truth = ev.GroundTruth(gt_dir, ignore_index=IGNORE)
        pred = ev.PngPredictions(pred_dir)
        res = None
        for w in args.workers:
            t, res = timed(lambda: ev.evaluate(truth, pred, N_CLASSES, ignore_index=IGNORE, workers=w, worst_k=0),
                           args.repeat)
            rows.append(("evaluate (library)", w, t))
        assert abs(res.scores.mean_iou - miou_naive) < 1e-9, (res.scores.mean_iou, miou_naive)
        w = max(args.workers)

        def with_report():
            r = ev.evaluate(truth, pred, N_CLASSES, ignore_index=IGNORE, workers=w, worst_k=8)
            ev.write_report(r, Path(tmp) / "report")

        t, _ = timed(with_report, args.repeat)
        rows.append(("evaluate + all reports and PNGs", w, t))
        # the scoring step alone, masks already in memory: what the bincount buys over the class loop
        pairs = [(np.array(Image.open(gp)), np.array(Image.open(pred_dir / gp.name)))
                 for gp in sorted(gt_dir.glob("*.png"))]
        t_naive, m1 = timed(lambda: naive_pairs(pairs), args.repeat)
        t_fast, m2 = timed(lambda: pooled(pairs), args.repeat)
        assert abs(m1 - m2) < 1e-9
    print(f"{args.pairs} pairs of 480x360 masks ({what}), {N_CLASSES} classes; best of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; mean IoU {miou_naive:.4f} (both)\n")
    print("| method | threads | seconds | pairs/s | vs naive |")
    print("|---|---:|---:|---:|---:|")
    base = rows[0][2]
    for name, w, t in rows:
        print(f"| {name} | {w} | {t:.2f} | {args.pairs / t:.0f} | {base / t:.1f}x |")
    print(f"| scoring only, masks in memory: naive class loop | 1 | {t_naive:.2f} | {args.pairs / t_naive:.0f} | 1.0x |")
    print(f"| scoring only, masks in memory: count_pixels (one bincount) | 1 | {t_fast:.2f} | "
          f"{args.pairs / t_fast:.0f} | {t_naive / t_fast:.1f}x |")


if __name__ == "__main__":
    main()
