"""A real predict output folder over synthetic photos (tiny random model), for the select tests."""

from pathlib import Path

from PIL import Image

from fcn_label.predict import PredictJob, PredictOptions, discover
from fcn_label.predict import Predictor
from support.helpers import rand_image, tempered  # noqa: F401 (tempered: re-exported for the tests)


def predict_pool(root: Path, n: int = 14, probs: bool = True) -> Path:
    imgs = root / "pool"
    imgs.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rand_image(36 + 4 * (i % 3), 44, seed=100 + i)).save(imgs / f"p{i:02d}.png")
    out = root / "pred"
    items, problems = discover([imgs], out)
    PredictJob(Predictor(tempered(7), device="cpu"),
               PredictOptions(out=out, probs=probs, workers=0)).run(items, problems)
    return out
