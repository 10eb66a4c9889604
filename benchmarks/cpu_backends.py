"""CPU levers for the shipped model, side by side: speed of the network alone, val accuracy, end to end.

    python benchmarks/cpu_backends.py [--rounds 7] [--val 101] [--calib 32] [--e2e-images 48] [--json out.json]

Levers (each a callable with the FCN forward's contract, see fcn_label/predict/backends.py):

* plain       ``checkpoint.build()``: fp32, NCHW, BatchNorm as trained (the issue's baseline)
* plain_cl    the same in channels_last (the issue's "plain forward" figure, 12.1 img/s)
* eager       BatchNorm folded + channels_last (predict's path today)
* bf16        eager with bfloat16 weights and activations
* ort_int8    ONNX Runtime, QDQ static int8 (calibrated on TRAIN images); only when onnxruntime
              is installed

Speed: every lever is timed on the same normalised 480x360 CamVid val frame, batch 1, in
interleaved rounds (each round runs every lever ``--iters`` times); the figure is the fastest
call over all rounds, so a busy neighbour slows a round, not a lever. The process CPU time of
the fastest call is reported too: with ``--threads 1`` it is the cost per image on one core and
barely moves when other processes share the machine (with 2 threads it includes OpenMP's
spin-waiting, which grows under contention). Accuracy: CamVid val mean
IU (ignore label 11, 11 classes, fcn_label.metrics) on ``--val`` images, plus the share of pixel
labels equal to plain fp32's. Warm-up: seconds to build (export, calibrate, convert) and first
call, and the first call at a second size (333x257) after that, which shows whether a new size
costs a rebuild. End to end: the real PredictJob on ``--e2e-images`` val frames with the predictor's
model replaced by the lever, interleaved rounds, fastest run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fcn_label.predict.backends import make_backend  # noqa: E402
from fcn_label.metrics import confusion_matrix, scores  # noqa: E402
from fcn_label.checkpoint import SHIPPED, load_checkpoint  # noqa: E402

CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"
ALL = ["plain", "plain_cl", "eager", "bf16", "ort_int8"]
EXACT = {"plain"}  # the reference itself


def read_list(name: str, n: int, spread: bool) -> list[tuple[Path, Path]]:
    rows = [line.split() for line in (CAMVID / name).read_text().splitlines() if line.strip()]
    if spread and n < len(rows):  # evenly spaced: CamVid lists are consecutive video frames
        rows = [rows[int(i * len(rows) / n)] for i in range(n)]
    return [(CAMVID / a, CAMVID / b) for a, b in rows[:n]]


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def normalise(ck, arr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    return ck.normalization.apply(x).contiguous(memory_format=torch.channels_last)


def no_grad(fn):
    def run(x):
        with torch.inference_mode():
            return fn(x)
    return run


# -- levers -------------------------------------------------------------------------


def build(kind: str, ck, calib, example, tmp, threads):
    model = ck.build()
    if kind == "plain":
        return no_grad(model)
    if kind == "plain_cl":
        return no_grad(model.to(memory_format=torch.channels_last))
    if kind == "ort_int8":
        return make_backend(model, "ort-int8", calib, workdir=tmp)
    return make_backend(model, kind, calib)


def timed(fn, x, iters: int) -> tuple[float, float]:
    """Fastest wall time and fastest process CPU time (all threads) of ``iters`` calls."""
    best = cpu = float("inf")
    for _ in range(iters):
        c, t = time.process_time(), time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return best, cpu


def evaluate(fn, val_x, val_gt, ref_labels=None):
    conf = np.zeros((11, 11), np.int64)
    agree = total = 0
    labels = []
    for i, (x, gt) in enumerate(zip(val_x, val_gt)):
        lab = fn(x).argmax(1)[0].to(torch.uint8).numpy()
        labels.append(lab)
        conf += confusion_matrix(gt, lab, 11, ignore_index=11)
        if ref_labels is not None:
            agree += int((lab == ref_labels[i]).sum())
            total += lab.size
    return scores(conf).mean_iou, (agree / total if total else 1.0), labels


def e2e(ck, fn, files: list[Path], tmp: Path, tag: str, workers: int) -> float:
    from fcn_label.predict import PredictJob, PredictOptions, discover
    from fcn_label.predict import Predictor

    pred = Predictor(ck, device="cpu")
    if fn is not None:
        pred.model = fn
    folder = tmp / "e2e_in"
    if not folder.exists():
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
    out = tmp / f"e2e_out_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    items, _ = discover([folder], out)
    pred.predict_arrays([rgb(files[0])])  # warm-up inside the predictor's own inference mode
    t = time.perf_counter()
    res = PredictJob(pred, PredictOptions(out=out, workers=workers)).run(items)
    dt = time.perf_counter() - t
    assert res.done == len(files) and not res.failed, res.failed
    return len(files) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=3, help="calls per lever per round")
    ap.add_argument("--val", type=int, default=101, help="val images for mean IU (101 = all)")
    ap.add_argument("--calib", type=int, default=32, help="TRAIN images for int8 calibration")
    ap.add_argument("--skip-accuracy", default="", help="levers whose val accuracy is not measured ('all': none)")
    ap.add_argument("--e2e-images", type=int, default=48, help="0: no end-to-end runs")
    ap.add_argument("--e2e-kinds", default="eager,ort_int8")
    ap.add_argument("--e2e-rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="predict's decoding workers in the end-to-end runs")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ALL]
    if bad:
        ap.error(f"unknown lever(s) {bad}; choose from {','.join(ALL)}")
    if "ort_int8" in kinds:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print('onnxruntime not installed: ort_int8 skipped (pip install "fcn-label[onnx]")')
            kinds = [k for k in kinds if k != "ort_int8"]
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fcn-cpu-backends-"))
    ck = load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path)
    val = read_list("val.txt", a.val, spread=False)
    calib = [normalise(ck, rgb(p)) for p, _ in read_list("train.txt", a.calib, spread=True)]
    val_x = [normalise(ck, rgb(p)) for p, _ in val]
    val_gt = [np.asarray(Image.open(g)) for _, g in val]
    x = val_x[0]
    assert x.shape[-2:] == (360, 480), x.shape
    odd = normalise(ck, np.ascontiguousarray(np.asarray(Image.open(val[1][0]).convert("RGB").resize((333, 257)))))

    fns, warm = {}, {}
    for k in kinds:
        t = time.perf_counter()
        try:
            fn = build(k, ck, calib, x, tmp, a.threads)
            fn(x)
        except Exception as e:  # a lever that does not work here is reported, not fatal
            print(f"{k}: cannot build ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        t1 = time.perf_counter()
        y = fn(odd)
        t2 = time.perf_counter()
        assert tuple(y.shape[-2:]) == (257, 333), (k, y.shape)
        fns[k] = fn
        warm[k] = (t1 - t, t2 - t1)
        print(f"built {k}: {t1 - t:.1f} s to first output, {t2 - t1:.2f} s first call at 333x257", flush=True)

    best = {k: float("inf") for k in fns}
    cpu = dict(best)
    for r in range(a.rounds):
        for k, fn in fns.items():
            wall, c = timed(fn, x, a.iters)
            best[k], cpu[k] = min(best[k], wall), min(cpu[k], c)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {1 / best[k]:.2f}" for k in fns), flush=True)

    acc = {}
    ref = None
    skip = set(a.skip_accuracy.split(","))
    if "all" not in skip:
        ref_fn = fns.get("plain") or no_grad(ck.build())
        miou, _, ref = evaluate(ref_fn, val_x, val_gt)
        acc["plain"] = (miou, 1.0)
    for k, fn in fns.items():
        if k in EXACT or k in skip or "all" in skip:
            continue
        miou, agree, _ = evaluate(fn, val_x, val_gt, ref)
        acc[k] = (miou, agree)
        print(f"accuracy {k}: mean IU {miou:.4f}, {100 * agree:.2f}% of labels as plain fp32", flush=True)

    e2e_res: dict[str, float] = {}
    if a.e2e_images:
        files = [p for p, _ in read_list("val.txt", a.e2e_images, spread=True)]
        ek = [k for k in a.e2e_kinds.split(",") if k in fns]
        for r in range(a.e2e_rounds):
            for k in ek:
                v = e2e(ck, None if k == "eager" else fns[k], files, tmp, k, a.workers)
                e2e_res[k] = max(e2e_res.get(k, 0.0), v)
            print(f"e2e round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in e2e_res.items()), flush=True)

    base = 1 / best["plain"] if "plain" in best else None
    hw = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{a.threads} threads")
    print(f"\nhardware: {hw}; 480x360, batch 1, fastest of {a.rounds} interleaved rounds x {a.iters} calls;"
          f" mean IU on {len(val)} CamVid val images")
    print("| lever | model only (img/s) | vs plain | CPU ms per image (process time) | vs plain | val mean IU | same labels as fp32 | build + 1st call (s) | 1st call at 333x257 (s) | end to end (img/s) | e2e / plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for k in fns:
        s = 1 / best[k]
        miou, agree = acc.get(k, (float("nan"), float("nan")))
        e = e2e_res.get(k)
        rows.append({"lever": k, "img_s": s, "cpu_ms": 1000 * cpu[k], "miou": miou, "agree": agree, "warmup_s": warm[k][0],
                     "second_size_s": warm[k][1], "e2e_img_s": e})
        print(f"| {k} | {s:.2f} | {s / base:.2f}x | {1000 * cpu[k]:.0f} | {cpu['plain'] / cpu[k]:.2f}x | {miou:.4f} | {100 * agree:.2f}% | {warm[k][0]:.1f} | "
              f"{warm[k][1]:.2f} | {'' if e is None else f'{e:.2f}'} | "
              f"{'' if e is None or not base else f'{e / base:.2f}x'} |" if base else f"| {k} | {s:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"hardware": hw, "args": vars(a) | {"json": str(a.json)}, "rows": rows}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
