"""Predictor.preprocess (a per-channel lookup table on the CPU) gives bit for bit the floats of the plain
float32 formula ((pixel * scale) - mean) / std, in RGB or Caffe's BGR order."""

from __future__ import annotations

import numpy as np
import pytest

from fcn_label.checkpoint import CAFFE_BGR, IMAGENET
from fcn_label.predict import Predictor
from support.helpers import make_checkpoint


@pytest.mark.parametrize("norm", [IMAGENET, CAFFE_BGR], ids=["imagenet", "caffe-bgr"])
def test_preprocess_is_the_plain_float32_formula(norm):
    ck = make_checkpoint()
    ck.normalization = norm
    p = Predictor(ck, device="cpu")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(2)]
    imgs[0][0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]  # the ends of the range
    x = np.stack(imgs).astype(np.float32) * np.float32(norm.scale)
    if norm.bgr:
        x = x[..., ::-1]
    want = (x - np.array(norm.mean, np.float32)) / np.array(norm.std, np.float32)  # (N, H, W, 3)
    got = p.preprocess(imgs)
    assert got.shape == (2, 3, 37, 53)
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy().view(np.uint32), want.view(np.uint32))
