"""Turn a training run's best checkpoint into the shipped model file.

    python scripts/export_pretrained.py runs/B/best.pt pretrained/fcn8s-compact-camvid.pt \
        [--val ../shared/data/camvid/val.txt] [--command "..."] [--selection "..."] [--description "..."]

Drops the training state, stores the weights as float16 (half the size; loading
casts back to float32) and adds the name, license, training command and how the run was
selected. Given a val list, the metrics stored (and shown by `fcn-label models`) are those of
`fcn-label evaluate` on the exported float16 file itself, the numbers the model card
quotes; the run's own validation figures are kept as ``training_metrics``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label.checkpoint import SHIPPED, load_checkpoint, save_checkpoint  # noqa: E402

# How the shipped file was made (scripts/gpu_session.sh, run B, on an H200), in today's command-line syntax
# (configs/camvid-compact.toml holds the recipe); without a GPU drop --device/--amp/channels_last.
COMMAND = ("python scripts/pack_camvid.py ../shared/data/camvid .gpu/camvid && "
           "fcn-label finetune .gpu/camvid/train.txt --val .gpu/camvid/val.txt --config configs/camvid-compact.toml "
           "--set workers=6 --set cache=false --set channels_last=true --device cuda --amp --out runs/B")
SELECTION = ("two runs differing only in AdamW weight decay (1e-4, 1e-2); the one with the higher CamVid val mean IU "
             "(1e-2); its final EMA weights after 180 epochs, which were also its best of the evaluations every 10 epochs")


def measure(ck, val: str) -> dict:
    """The four metrics and per-class IoU on ``val``, exactly as `fcn-label evaluate --weights` computes them."""
    from fcn_label import evaluate as ev
    from fcn_label.predict import Predictor

    truth = ev.GroundTruth(val, ignore_index=ck.ignore_index)
    preds = ev.ModelPredictions(Predictor(ck, device="cpu"), {k: it.image for k, it in truth.items.items()})
    res = ev.evaluate(truth, preds, ck.config.num_classes, ck.classes, ck.ignore_index)
    if res.failures:
        raise SystemExit(f"{len(res.failures)} val images failed: {res.failures[0]}")
    s = res.scores
    return {"val_pixel_accuracy": float(s.pixel_accuracy), "val_mean_accuracy": float(s.mean_accuracy),
            "val_mean_iou": float(s.mean_iou), "val_fw_iou": float(s.fw_iou), "val_iou": [float(x) for x in s.iou]}


def main(src: str, dst: str, val: str | None = None, command: str = COMMAND, selection: str = SELECTION,
         description: str | None = None) -> None:
    ck = load_checkpoint(src)
    info = SHIPPED["fcn8s-compact-camvid"]
    ck.train_state = None
    ck.metadata = {
        **ck.metadata,
        "name": info.name,
        "description": description or info.description,
        "license": info.license,
        "training_command": command,
        "selection": selection,
    }
    tc = ck.metadata.get("train_config", {})
    tc.pop("max_steps", None)
    for key in ("data", "val", "images", "out"):  # where the run read and wrote is not the recipe: no machine's paths
        if tc.get(key) and Path(tc[key]).is_absolute():
            tc[key] = str(Path(*Path(tc[key]).parts[-2:])) if key != "out" else f"runs/{Path(tc[key]).name}"
    save_checkpoint(ck, dst, with_train_state=False, half=True)
    if val:
        ck = load_checkpoint(dst)
        ck.metadata["training_metrics"] = ck.metadata.get("metrics", {})
        ck.metadata["metrics"] = measure(ck, val)
        ck.metadata["metrics_source"] = f"fcn-label evaluate on {val}, this file, full resolution"
        save_checkpoint(ck, dst, with_train_state=False, half=True)
    print(f"wrote {dst} ({Path(dst).stat().st_size / 1e6:.1f} MB): epoch {ck.metadata.get('epochs')}, "
          f"val mean IU {100 * ck.metadata.get('metrics', {}).get('val_mean_iou', float('nan')):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("val", nargs="?", help="val list: store the evaluate figures of the exported file")
    ap.add_argument("--command", default=COMMAND, help="the commands that made the run (stored in the file)")
    ap.add_argument("--selection", default=SELECTION, help="how the run was chosen, on val only")
    ap.add_argument("--description", default=None, help="one line shown by fcn-label models")
    a = ap.parse_args()
    main(a.src, a.dst, a.val, a.command, a.selection, a.description)
