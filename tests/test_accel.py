"""CPU backends (fcn_label/predict/backends.py) against the plain fp32 forward of the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_label.predict.backends import KINDS, BackendError, _Padded, make_backend
from fcn_label.model import FCN, FCNConfig
from fcn_label.checkpoint import SHIPPED, load_checkpoint

ODD_SIZES = [(257, 333), (31, 45), (64, 64)]


def _tiny_model() -> FCN:
    torch.manual_seed(0)
    m = FCN(FCNConfig(arch="fcn8s", num_classes=5, width=0.0625, fc_channels=16, batch_norm=True, padding="same"))
    for mod in m.modules():  # non-trivial BN statistics and score weights, so folding and skips matter
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(mod, torch.nn.Conv2d) and not isinstance(mod, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(mod.weight, std=0.3)
    return m.eval()


def _camvid_inputs(camvid, list_name: str, n: int):
    ck = load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path)
    rows = [line.split()[0] for line in (camvid / list_name).read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // n)
    xs = []
    for rel in rows[::step][:n]:
        a = np.asarray(Image.open(camvid / rel).convert("RGB"))
        xs.append(ck.normalization.apply(torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)))
    return ck, xs


@pytest.mark.parametrize("kind", ["fp8", "compile", "int8", "ort"])  # the last three: removed in 0.2.0
def test_unknown_kind_lists_choices(kind):
    with pytest.raises(ValueError, match=f"unknown backend '{kind}'; choose one of eager, bf16, ort-int8$"):
        make_backend(_tiny_model(), kind)


def test_ort_int8_without_calibration_images_says_so():
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="calibration images"):
        make_backend(_tiny_model(), "ort-int8", [])


def test_ort_int8_refuses_caffe_padding():
    m = FCN(FCNConfig(arch="fcn8s", num_classes=3, width=0.0625, fc_channels=16, padding="caffe")).eval()
    with pytest.raises(BackendError, match="padding='same'"):
        make_backend(m, "ort-int8")


@pytest.mark.parametrize("size", ODD_SIZES + [(96, 128)])
def test_padding_outside_the_graph_matches_the_models_own(size):
    """_Padded pads to a multiple of 32 and crops; the FCN pads itself: same scores, same shape."""
    m = _tiny_model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = m(x)
        got = _Padded(m)(x)
    assert got.shape == want.shape == (2, 5, *size)
    # random weights give scores up to ~1e6: compare to float32 rounding of that scale
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_eager_backend_is_the_fp32_forward_and_leaves_the_model_alone():
    m = _tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        want = m(x)
    got = make_backend(m, "eager")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # folding happened on a copy
    assert isinstance(m.bn1_1, torch.nn.BatchNorm2d)


def _agreement(fn, ref_model, xs) -> float:
    same = total = 0
    with torch.no_grad():
        for x in xs:
            a = fn(x).argmax(1)
            b = ref_model(x).argmax(1)
            same += int((a == b).sum())
            total += a.numel()
    return same / total


def test_bf16_agrees_with_fp32_on_camvid_val(camvid):
    ck, xs = _camvid_inputs(camvid, "val.txt", 3)
    ref = ck.build()
    fn = make_backend(ref, "bf16")
    assert _agreement(fn, ref, xs) >= 0.99
    for size in ODD_SIZES:
        assert fn(torch.randn(1, 3, *size)).shape == (1, 11, *size)


@pytest.mark.slow
def test_ort_int8_agrees_with_fp32_on_camvid_val(camvid, tmp_path):
    """Calibrated on TRAIN frames, checked on VAL frames: >= 99% of pixel labels as fp32; any size runs."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ck, calib = _camvid_inputs(camvid, "train.txt", 4)
    _, xs = _camvid_inputs(camvid, "val.txt", 3)
    ref = ck.build()
    fn = make_backend(ref, "ort-int8", calib, workdir=tmp_path)
    agree = _agreement(fn, ref, xs)
    assert agree >= 0.99, f"ort-int8: {100 * agree:.2f}% of labels as fp32"
    for size in ODD_SIZES:
        assert fn(torch.randn(1, 3, *size)).shape == (1, 11, *size)


def test_kinds_are_documented():
    import fcn_label.predict.backends as accel

    for k in KINDS:
        assert f"``{k}``" in accel.__doc__
