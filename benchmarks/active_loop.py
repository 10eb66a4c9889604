"""Active learning on CamVid: images chosen by `fcn-label select` versus chosen at random.

    python benchmarks/active_loop.py [--epochs 40] [--initial-epochs 60] [--size 360x480] [--pool 367]

The loop a labelling team runs, with CamVid's own labels standing in for the person:

1. round 0: ``--start`` (30) train images drawn at random (seeded) are "labelled"; a compact
   FCN-8s (the shipped model's recipe, `modern` preset) is trained on them from scratch
   for ``--initial-epochs``. Both strategies share this model.
2. each of ``--rounds`` (3) rounds, per strategy: the current model predicts the unlabelled
   rest of the pool (``--pool`` train images) with confidence maps; ``select`` (library call
   behind `fcn-label select --strategy uncertainty`) picks ``--step`` (30) of them, or
   ``random`` draws them (seeded, no prediction needed); their CamVid masks join the labelled
   list, and the model is fine-tuned from the previous round's weights for ``--epochs``.
3. after every round the model is scored on CamVid val (mean IU, pooled confusion matrix,
   label 11 ignored), validating only at the end of the round so no val figure picks a model.

Both strategies get the same epochs, schedule and seeds; only the choice of images differs.
``--size HxW`` trains and validates on resized copies (NEAREST for masks, written under
--out) to make a run cheaper; the default is CamVid's native 360x480.

Writes OUT/results.csv and OUT/results.md (val mean IU per round and strategy) and keeps
every round's run folder, list files and predictions under OUT. Numbers depend on the
machine and its load: say which one ran it.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fcn_label.datasets.listfile import pairs_from_list  # noqa: E402
from fcn_label.images import write_text_atomic  # noqa: E402
from fcn_label.predict import PredictJob, PredictOptions, discover  # noqa: E402
from fcn_label.predict import Predictor  # noqa: E402
from fcn_label.predfolder import read_report  # noqa: E402
from fcn_label.selection import STRATEGIES, select  # noqa: E402
from fcn_label.train import Trainer, TrainConfig  # noqa: E402
from fcn_label.checkpoint import load_checkpoint  # noqa: E402

NUM_CLASSES, IGNORE = 11, 11


def parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected HxW, e.g. 360x480") from None
    return h, w


def resized_pairs(pairs, size: tuple[int, int], folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) at ``size``: the originals at native size, else resized copies under ``folder``."""
    out = []
    for p in pairs:
        with Image.open(p.image) as im:
            native = im.size[::-1] == size
        if native:
            out.append((p.image.resolve(), p.mask.resolve()))
            continue
        img, msk = folder / "images" / f"{p.key}.png", folder / "masks" / f"{p.key}.png"
        if not (img.is_file() and msk.is_file()):
            img.parent.mkdir(parents=True, exist_ok=True)
            msk.parent.mkdir(parents=True, exist_ok=True)
            Image.open(p.image).convert("RGB").resize(size[::-1], Image.BILINEAR).save(img)
            Image.open(p.mask).resize(size[::-1], Image.NEAREST).save(msk)
        out.append((img.resolve(), msk.resolve()))
    return out


def write_list(path: Path, pairs, with_masks: bool = True) -> Path:
    write_text_atomic(path, "".join(f"{i} {m}\n" if with_masks else f"{i}\n" for i, m in pairs))
    return path


def train(args, labelled_list: Path, val_list: Path, out: Path, init: Path | None, epochs: int, seed: int) -> dict:
    """One fine-tuning run (the library call behind `fcn-label finetune`), validated once at its end."""
    crop = tuple(min(a, b) for a, b in zip(args.size, (288, 384)))
    kw = dict(val=str(val_list), out=str(out), num_classes=NUM_CLASSES, ignore_index=IGNORE, epochs=epochs,
              val_every=epochs, crop=crop, seed=seed, init=str(init) if init else None, threads=args.threads,
              save_every=epochs, device=args.device, warmup_epochs=min(2, max(0, epochs - 1)), weight_decay=args.weight_decay)
    cfg = TrainConfig(data=str(labelled_list), **kw)
    cfg.apply_preset(set(kw))
    t = time.perf_counter()
    row = Trainer(cfg, log=(lambda m: print("   ", m, flush=True)) if args.verbose else (lambda m: None)).run()
    row = dict(row)
    row["seconds"] = time.perf_counter() - t
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid",
                    help="CamVid folder with train.txt, val.txt and classes.txt")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "active_loop", help="everything is written here")
    ap.add_argument("--start", type=int, default=30, help="labelled images at round 0")
    ap.add_argument("--step", type=int, default=30, help="images added per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=367, help="train images in the pool (a seeded sample; 367 = all)")
    ap.add_argument("--val-images", type=int, default=0, help="score on the first N val images (0 = all 101)")
    ap.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs per round (same for every strategy)")
    ap.add_argument("--initial-epochs", type=int, default=60, help="epochs of the round-0 model, from scratch")
    ap.add_argument("--size", type=parse_size, default=(360, 480), help="HxW of training and val images")
    ap.add_argument("--strategies", nargs="+", default=["uncertainty", "random"], choices=STRATEGIES)
    ap.add_argument("--weight-decay", type=float, default=1e-2, help="as the shipped model's recipe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--verbose", action="store_true", help="print each training run's log")
    args = ap.parse_args()

    t_all = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_pairs, problems = pairs_from_list(args.data / "train.txt")
    val_pairs, vproblems = pairs_from_list(args.data / "val.txt")
    if problems or vproblems or not train_pairs:
        sys.exit(f"error: {args.data}: CamVid train.txt / val.txt unusable: {(problems + vproblems)[:3]}")
    rng = random.Random(args.seed)
    pool = sorted(rng.sample(sorted(train_pairs, key=lambda p: p.key), min(args.pool, len(train_pairs))),
                  key=lambda p: p.key)
    if args.start + args.rounds * args.step > len(pool):
        sys.exit(f"error: --pool {len(pool)} is smaller than --start + --rounds x --step")
    val_pairs = val_pairs[: args.val_images] if args.val_images else val_pairs
    print(f"active loop: pool {len(pool)} CamVid train images at {args.size[0]}x{args.size[1]}, val {len(val_pairs)}, "
          f"start {args.start}, {args.rounds} rounds of +{args.step}, {args.initial_epochs} + {args.epochs}/round epochs",
          flush=True)
    pool = resized_pairs(pool, args.size, out / "data" / "train")
    val = resized_pairs(val_pairs, args.size, out / "data" / "val")
    shutil.copy(args.data / "classes.txt", out / "classes.txt")  # class names beside every list under OUT
    val_list = write_list(out / "val.txt", val)

    start = random.Random(args.seed + 1).sample(pool, args.start)
    r0 = train(args, write_list(out / "round0.txt", start), val_list, out / "round0", None, args.initial_epochs,
               args.seed)
    print(f"round 0: {len(start)} labelled, val mean IU {100 * r0['val_mean_iou']:.2f} ({r0['seconds']:.0f}s)", flush=True)
    results = [{"strategy": s, "round": 0, "labelled": len(start), "val_mean_iou": r0["val_mean_iou"],
                "val_pixel_accuracy": r0["val_pixel_accuracy"], "train_seconds": round(r0["seconds"], 1),
                "select_seconds": 0.0} for s in args.strategies]
    by_image = {str(i): (i, m) for i, m in pool}
    for strategy in args.strategies:
        labelled = list(start)
        model = out / "round0" / "best.pt"
        for r in range(1, args.rounds + 1):
            t = time.perf_counter()
            rest = sorted(set(pool) - set(labelled))
            folder = out / strategy / f"round{r}"
            if strategy == "random":
                chosen = random.Random(args.seed * 1000 + r).sample(rest, args.step)
            else:
                pool_list = write_list(folder / "unlabelled.txt", rest, with_masks=False)
                items, bad = discover([pool_list], folder / "pred")
                PredictJob(Predictor(load_checkpoint(model), device=args.device),
                           PredictOptions(out=folder / "pred", probs=True, workers=0)).run(items, bad)
                picks, _ = select(read_report(folder / "pred"), args.step, strategy, seed=args.seed)
                chosen = [by_image[c.row.input] for c in picks]
            labelled += chosen
            sel_s = time.perf_counter() - t
            row = train(args, write_list(folder / "labelled.txt", labelled), val_list, folder / "run", model,
                        args.epochs, args.seed + r)
            model = folder / "run" / "best.pt"
            print(f"{strategy} round {r}: {len(labelled)} labelled, val mean IU {100 * row['val_mean_iou']:.2f} "
                  f"(select {sel_s:.0f}s, train {row['seconds']:.0f}s)", flush=True)
            results.append({"strategy": strategy, "round": r, "labelled": len(labelled),
                            "val_mean_iou": row["val_mean_iou"], "val_pixel_accuracy": row["val_pixel_accuracy"],
                            "train_seconds": round(row["seconds"], 1), "select_seconds": round(sel_s, 1)})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(results[0]))
        w.writeheader()
        w.writerows(results)
    counts = sorted({r["labelled"] for r in results})
    md = ["| labelled images | " + " | ".join(f"{s} val mean IU" for s in args.strategies) + " |",
          "|---:|" + "---:|" * len(args.strategies)]
    for n in counts:
        cells = [next((f"{100 * r['val_mean_iou']:.2f}" for r in results if r["strategy"] == s and r["labelled"] == n), "")
                 for s in args.strategies]
        md.append(f"| {n} | " + " | ".join(cells) + " |")
    minutes = (time.perf_counter() - t_all) / 60
    md.append("")
    md.append(f"{args.initial_epochs} epochs at round 0, {args.epochs} per round after, {args.size[0]}x{args.size[1]}, "
              f"pool {len(pool)}, val {len(val)} images; {minutes:.1f} min in all.")
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "args.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                              indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
