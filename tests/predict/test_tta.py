"""--tta: multi-scale and mirror averaging against a plain one-image loop written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_label.choices import TTA_LEVELS
from fcn_label.cli import run_cli
from fcn_label.predict import Predictor

from support.helpers import make_checkpoint, rand_image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference(model, img: np.ndarray, scales, flip: bool) -> np.ndarray:
    """Softmax of each view (resized by s, optionally mirrored), brought back to the image's size and
    mirror, averaged over the views: the definition of the level, one image, no batching."""
    x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 255.0 - MEAN) / STD
    h, w = img.shape[:2]
    views = []
    with torch.no_grad():
        for s in scales:
            xs = x if s == 1 else F.interpolate(x, size=(int(h * s), int(w * s)), mode="bilinear", align_corners=False)
            for mirror in ((False, True) if flip else (False,)):
                p = torch.softmax(model(xs.flip(-1) if mirror else xs), dim=1)
                p = p.flip(-1) if mirror else p
                views.append(F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(views).mean(0)[0].numpy()


@pytest.mark.parametrize("level", ["flip", "scales"])
def test_levels_match_the_plain_loop(level):
    ck = make_checkpoint(padding="same", bn=True, seed=4)
    flip, scales = TTA_LEVELS[level]
    pr = Predictor(ck, device="cpu", flip=flip, scales=scales, channels_last=False)
    imgs = [rand_image(64, 96, seed=s) for s in range(3)] + [rand_image(40, 52, seed=9)]  # a batch and an odd size
    got = pr.predict_arrays(imgs)
    model = ck.build().eval()
    for img, p in zip(imgs, got):
        ref = reference(model, img, scales, flip)
        agree = (p.labels == ref.argmax(0)).mean()
        assert agree > 0.995, agree  # float order differs from the batched path only at near-ties
        np.testing.assert_allclose(p.confidence, ref.max(0), atol=2e-4)


def test_scales_change_the_prediction_and_none_is_the_plain_forward():
    ck = make_checkpoint(padding="same", bn=True, seed=4)
    img = rand_image(64, 96, seed=1)
    plain = Predictor(ck, device="cpu", channels_last=False).predict_arrays([img])[0]
    multi = Predictor(ck, device="cpu", flip=True, scales=TTA_LEVELS["scales"][1], channels_last=False).predict_arrays([img])[0]
    ref = reference(ck.build().eval(), img, (1.0,), False)
    assert (plain.labels == ref.argmax(0)).mean() > 0.995
    assert not np.allclose(plain.confidence, multi.confidence, atol=1e-3)


def test_bad_scales_and_tta_without_weights_are_one_line_errors(tmp_path, capsys):
    from fcn_label.errors import ConfigError

    with pytest.raises(ConfigError, match="positive"):
        Predictor(make_checkpoint(), device="cpu", scales=(0.0, 1.0))
    with pytest.raises(SystemExit) as e:
        run_cli(["evaluate", "--gt", str(tmp_path), "--pred", str(tmp_path), "--tta", "scales"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--tta" in err and "--weights" in err and "Traceback" not in err
