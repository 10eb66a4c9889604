"""The shipped default model: loads, predicts, and stays as good as its card says (a regression guard)."""

import numpy as np
import pytest

from fcn_label import load_checkpoint, read_image, read_mask
from fcn_label.metrics import confusion_matrix, scores
from fcn_label.predict import Predictor
from fcn_label.weights import CAMVID_CLASSES, CAMVID_PALETTE, DEFAULT_WEIGHTS, SHIPPED, resolve_weights

# Five val frames spread over the sequence. The shipped file scores 92.7% pixel accuracy and
# 68.4 mean IU on them; thresholds a few points lower catch a broken export, a wrong
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
