"""The shipped default model: loads, predicts, and stays as good as its card says (a regression guard)."""

from pathlib import Path

import numpy as np
import pytest

from fcn_label import load_checkpoint, read_image, read_mask
from fcn_label.metrics import confusion_matrix, scores
from fcn_label.predict import Predictor
from fcn_label.checkpoint import DEFAULT_WEIGHTS, SHIPPED, resolve_weights
from fcn_label.classes import CAMVID_CLASSES, CAMVID_PALETTE

# Five val frames spread over the sequence. The shipped file scores well above these thresholds
# on them; thresholds a few points lower catch a broken export, a wrong
# normalisation or a preprocessing change, while float noise does not.
FRAMES = ["0016E5_07959", "0016E5_07999", "0016E5_08059", "0016E5_08109", "0016E5_08159"]
MIN_PIXEL_ACCURACY = 0.90
MIN_MEAN_IU = 0.63


def test_shipped_file_is_small_and_self_describing():
    path = resolve_weights(None)
    assert path == SHIPPED[DEFAULT_WEIGHTS].path and path.stat().st_size < 20e6
    ck = load_checkpoint(path)
    assert ck.classes == list(CAMVID_CLASSES) and [tuple(c) for c in ck.palette] == list(CAMVID_PALETTE)
    assert ck.ignore_index == 11 and ck.config.arch == "fcn8s" and ck.config.batch_norm
    assert "CC BY-NC" in ck.metadata["license"] and "fcn-label finetune" in ck.metadata["training_command"]


def test_shipped_model_labels_camvid_val(camvid):
    ck = load_checkpoint(resolve_weights(None))
    pred = Predictor(ck, device="cpu")
    imgs = [read_image(camvid / "val" / f"{f}.png") for f in FRAMES]
    out = pred.predict_arrays(imgs, batch_size=5)
    conf = np.zeros((11, 11), dtype=np.int64)
    for f, img, p in zip(FRAMES, imgs, out):
        assert p.labels.shape == img.shape[:2] and p.labels.max() < 11
        conf += confusion_matrix(read_mask(camvid / "valannot" / f"{f}.png"), p.labels, 11, ignore_index=11)
    s = scores(conf)
    assert s.pixel_accuracy >= MIN_PIXEL_ACCURACY, f"pixel accuracy {s.pixel_accuracy:.3f}"
    assert s.mean_iou >= MIN_MEAN_IU, f"mean IU {s.mean_iou:.3f}"
    # road, sky and building are most of every frame: the model must get them right
    for c in (0, 1, 3):
        assert s.iou[c] > 0.7, f"{CAMVID_CLASSES[c]} IoU {s.iou[c]:.3f}"


def test_model_card_figures_are_what_evaluate_gives_on_camvid_val(camvid, tmp_path):
    """The card's (and `fcn-label models`') figures = `fcn-label evaluate` on the full val split, now."""
    import re

    import pandas as pd

    from fcn_label.cli import run_cli
    repo = Path(__file__).resolve().parent.parent  # not `from conftest import`: another folder's may win

    with pytest.raises(SystemExit) as e:
        run_cli(["evaluate", "--weights", DEFAULT_WEIGHTS, "--gt", str(camvid / "val.txt"), "--out", str(tmp_path / "report")])
    assert e.value.code == 0
    summary = pd.read_csv(tmp_path / "report" / "summary.csv").set_index("metric")["value"]
    per_class = pd.read_csv(tmp_path / "report" / "per_class.csv")
    stored = load_checkpoint(resolve_weights(None)).metadata["metrics"]
    assert float(summary["mean_iou"]) == pytest.approx(stored["val_mean_iou"], abs=1e-5)
    assert float(summary["pixel_accuracy"]) == pytest.approx(stored["val_pixel_accuracy"], abs=1e-5)
    card = (repo / "pretrained" / "MODEL_CARD.md").read_text()  # the card stays at the top; the weights ship in the package
    row = "| " + " | ".join(f"{100 * float(summary[k]):.2f}" for k in
                            ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")) + " |"
    assert row in card, f"the card's metrics row should read {row}"
    for _, r in per_class.iterrows():
        assert re.search(rf"\| {r['class']} \| {100 * r['iou']:.2f} \|", card), f"card IoU of {r['class']}"
