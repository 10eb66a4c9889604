"""Turn a training run's best checkpoint into the shipped model file.

    python scripts/export_pretrained.py runs/camvid/best.pt pretrained/fcn8s-compact-camvid.pt

Drops the training state, stores the weights as float16 (half the size; loading
casts back to float32) and adds the name, license and training command. The
metrics recorded are the run's own validation figures; the model card's table
comes from `fcn-label evaluate` on the exported file itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label.weights import SHIPPED, load_checkpoint, save_checkpoint  # noqa: E402

COMMAND = ("fcn-label finetune ../shared/data/camvid/train.txt --val ../shared/data/camvid/val.txt "
           "--num-classes 11 --ignore-index 11 --epochs 30 --val-every 3 --seed 0 --out runs/camvid")


def main(src: str, dst: str) -> None:
    ck = load_checkpoint(src)
    info = SHIPPED["fcn8s-compact-camvid"]
    ck.train_state = None
    ck.metadata = {
        **ck.metadata,
        "name": info.name,
        "description": info.description,
        "license": info.license,
        "training_command": COMMAND,
        "selection": "best validation mean IU (EMA weights), CamVid val, evaluated every 3 epochs",
    }
    ck.metadata.get("train_config", {}).pop("max_steps", None)
    save_checkpoint(ck, dst, with_train_state=False, half=True)
    print(f"wrote {dst} ({Path(dst).stat().st_size / 1e6:.1f} MB): epoch {ck.metadata.get('epochs')}, "
          f"val mean IU {100 * ck.metadata.get('metrics', {}).get('val_mean_iou', float('nan')):.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
