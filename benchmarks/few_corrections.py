"""Which fine-tuning recipe `fcn-label serve` may run on a handful of corrected images.

    python benchmarks/few_corrections.py [--frames 10] [--recipes default-50,frozen-default-50,lr2e-4-50] [--out DIR]

An annotation team corrects a few frames in Label Studio and the backend fine-tunes the served
model on them. That must not make the model worse on the frames nobody corrected. Stand-in:
``--frames`` CamVid train frames, evenly spaced over train.txt, are the corrected ones (their
CamVid masks play the person's corrections); the shipped model is fine-tuned on them with each
recipe and scored on the 101 CamVid val frames (mean IU, pooled confusion matrix, label 11
ignored), next to the shipped model itself. Validation runs once, after the last epoch, so no val
figure picks a model; the model scored is the one the run saves (the EMA average when on).

Recipes: ``default-N`` = today's `finetune --init` defaults (modern preset) for N epochs;
``lrX-N`` = the same with ``--lr X``; a ``frozen-`` prefix trains with the backbone (conv1-conv5)
and every BatchNorm's statistics frozen, as `fcn-label serve` can
(:func:`fcn_label.serve.training.freeze_backbone`). Writes OUT/results.md. Numbers depend on the machine's load
only in time, not in value (CPU, fixed seed).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fcn_label.checkpoint import load_checkpoint, resolve_weights  # noqa: E402
from fcn_label.metrics import scores  # noqa: E402
from fcn_label.serve.training import train_round  # noqa: E402
from fcn_label.train import SegmentationDataset, evaluate_model  # noqa: E402
from fcn_label.datasets import load_pairs  # noqa: E402

CAMVID = REPO.parent / "shared" / "data" / "camvid"
MODEL = "fcn8s-compact-camvid"


def recipe(name: str) -> tuple[dict, bool]:
    """(TrainConfig options, frozen backbone) of a recipe name: [frozen-](default|lrX)-EPOCHS."""
    m = re.fullmatch(r"(frozen-)?(default|lr([0-9.e-]+))-(\d+)", name)
    if not m:
        raise SystemExit(f"recipe {name!r}: expected [frozen-]default-N or [frozen-]lrX-N")
    kw = {"epochs": int(m.group(4))}
    if m.group(3):
        kw["lr"] = float(m.group(3))
    return kw, bool(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--recipes", default="default-50,frozen-default-50,lr2e-4-50")
    ap.add_argument("--out", type=Path, default=Path("runs/few_corrections"))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in (a.camvid / "train.txt").read_text().splitlines() if ln.strip()]
    step = len(lines) / a.frames
    chosen = [lines[int(i * step)] for i in range(a.frames)]
    train_list = a.out / "train.txt"
    train_list.write_text("".join(" ".join(str(a.camvid / p) for p in ln.split()) + "\n" for ln in chosen))

    val_pairs, _, _ = load_pairs(a.camvid / "val.txt")
    val = SegmentationDataset(val_pairs, None, cache=False)
    ck = load_checkpoint(resolve_weights(MODEL))
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    n = ck.config.num_classes

    def miou(model, norm) -> float:
        return float(scores(evaluate_model(model, val, norm, n, 11, torch.device("cpu"))).mean_iou)

    rows = [("shipped model (no fine-tuning)", 100 * miou(ck.build("cpu"), ck.normalization), 0.0)]
    print(rows[-1], flush=True)
    for name in a.recipes.split(","):
        t0 = time.time()
        kw, frozen = recipe(name)
        tr = train_round(dict(data=str(train_list), init=MODEL, out=str(a.out / name), ignore_index=11,
                              device="cpu", threads=a.threads, **kw), log=lambda m: None, frozen=frozen)
        model = (tr.ema.model if tr.ema else tr.model)
        what = f"{tr.cfg.epochs} epochs, lr {tr.cfg.lr:g}" + (", backbone and BatchNorm frozen" if frozen else "")
        rows.append((f"{name}: {what}", 100 * miou(model, tr.norm), time.time() - t0))
        print(rows[-1], flush=True)
    md = ["| recipe (fine-tuned on %d CamVid train frames) | val mean IU (101 frames) | minutes |" % a.frames,
          "| --- | --- | --- |"]
    md += [f"| {r} | {v:.1f} | {s / 60:.1f} |" for r, v, s in rows]
    (a.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
