"""A real predict output folder from a tiny random model over synthetic photos in sub-folders."""

from pathlib import Path

import numpy as np
from PIL import Image

from fcn_label.predict import PredictJob, PredictOptions, discover
from fcn_label.predict import Predictor
from support.helpers import rand_image, tempered  # noqa: F401 (tempered: re-exported for the tests)


def run_predict(root: Path, probs=True, gt=True, n=10, palette="model") -> Path:
    imgs = root / "photos"
    for i in range(n):
        sub = imgs / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = (40, 56) if i % 3 else (48, 40)
        Image.fromarray(rand_image(h, w, seed=i)).save(sub / f"im{i:02d}.{'png' if i % 4 else 'jpg'}")
    gt_dir = None
    if gt:  # ground truth: vertical class bands, so every image gets a different IoU
        gt_dir = root / "gt"
        for p in sorted(imgs.rglob("*.*")):
            w, h = Image.open(p).size
            rel = p.relative_to(imgs).with_suffix(".png")
            m = (np.arange(w)[None, :].repeat(h, 0) * 5 // w + int(rel.stem[-2:]) % 3) % 5
            (gt_dir / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.fromarray(m.astype(np.uint8), mode="L").save(gt_dir / rel)
    ck = tempered(7)
    out = root / "pred"
    items, problems = discover([imgs], out)
    PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=out, probs=probs, gt=gt_dir, workers=0, palette=palette)).run(items, problems)
    return out
