"""Weights files: our checkpoints, pytorch-fcn state dicts, torchvision VGG16, and bad files."""

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision

from fcn_label.model import FCN, FCNConfig
from fcn_label.checkpoint import (
    CAFFE_BGR, Checkpoint, WeightsError, load_checkpoint, resolve_weights, save_checkpoint, vgg16_backbone_state,
)
from fcn_label.classes import VOC_CLASSES, voc_palette

TINY = dict(width=0.0625, fc_channels=16)


def tiny_checkpoint(arch="fcn8s", n=4, **kw):
    torch.manual_seed(0)
    cfg = FCNConfig(arch=arch, num_classes=n, **{**TINY, **kw})
    m = FCN(cfg)
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    return Checkpoint(cfg, m.state_dict(), [f"c{i}" for i in range(n)], voc_palette()[:n],
                      metadata={"metrics": {"val_mean_iou": 0.5}})


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    ck = tiny_checkpoint(batch_norm=True, padding="same")
    save_checkpoint(ck, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.config == ck.config and back.classes == ck.classes and back.metadata["metrics"]["val_mean_iou"] == 0.5
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(back.build()(x), ck.build()(x))
    # float16 storage halves the file and still predicts within fp16 rounding
    save_checkpoint(ck, tmp_path / "h.pt", half=True)
    assert os.path.getsize(tmp_path / "h.pt") < 0.6 * os.path.getsize(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "h.pt").build()(x), ck.build()(x), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_pytorch_fcn_state_dict_loads_strict_with_caffe_input(tmp_path, arch):
    m = FCN(FCNConfig(arch=arch, num_classes=21, **TINY))
    torch.save(m.state_dict(), tmp_path / "fcn.pth")
    torch.save({"epoch": 3, "model_state_dict": m.state_dict()}, tmp_path / "trainer.pth")  # pytorch-fcn trainer
    for f in ("fcn.pth", "trainer.pth"):
        ck = load_checkpoint(tmp_path / f)
        assert ck.config.arch == arch and ck.config.num_classes == 21
        assert ck.classes == list(VOC_CLASSES) and ck.normalization == CAFFE_BGR
        for k, v in ck.build().state_dict().items():
            assert torch.equal(v, m.state_dict()[k])


def test_caffe_normalisation_is_bgr_mean_subtracted():
    x = torch.tensor([[[[10]], [[20]], [[30]]]], dtype=torch.uint8)  # R=10 G=20 B=30
    y = CAFFE_BGR.apply(x)[0, :, 0, 0]
    torch.testing.assert_close(y, torch.tensor([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]))


def test_mismatches_name_both_sides(tmp_path):
    torch.save(FCN(FCNConfig(arch="fcn16s", num_classes=21, **TINY)).state_dict(), tmp_path / "a.pth")
    with pytest.raises(WeightsError, match=r"holds an fcn16s but --arch fcn8s"):
        load_checkpoint(tmp_path / "a.pth", arch="fcn8s")
    with pytest.raises(WeightsError, match=r"has 21 classes but 11 were asked for"):
        load_checkpoint(tmp_path / "a.pth", num_classes=11)


def test_bad_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(tiny_checkpoint(), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "notfcn.pt")
    for name, pattern in [("trunc.pt", "truncated"), ("text.pt", "not a PyTorch weights file"),
                          ("notfcn.pt", "not an FCN"), ("missing.pt", "not found")]:
        with pytest.raises(WeightsError, match=pattern) as e:
            load_checkpoint(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_torchvision_vgg16_maps_onto_fc6_fc7(tmp_path):
    """fc6 as a 7x7 conv over pool5 must equal torchvision's Linear over the flattened pool5."""
    full = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    torch.manual_seed(0)
    w = 0.125  # same layout as vgg16-397923af.pth, channels scaled to keep the test light
    sd = {}
    for k, shape in full.items():
        shape = list(shape)
        if k.startswith("features."):
            shape = [int(s * w) if s in (64, 128, 256, 512) else s for s in shape]
        elif k == "classifier.0.weight":
            shape = [64, int(512 * w) * 49]
        elif k in ("classifier.0.bias", "classifier.3.bias"):
            shape = [64]
        elif k == "classifier.3.weight":
            shape = [64, 64]
        sd[k] = torch.randn(*shape) * 0.05
    torch.save(sd, tmp_path / "vgg16-397923af.pth")
    cfg = FCNConfig(arch="fcn8s", num_classes=3, width=w, fc_channels=64)
    mapped = vgg16_backbone_state(tmp_path / "vgg16-397923af.pth", cfg)
    m = FCN(cfg)
    missing, unexpected = m.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith(("score", "upscore")) for k in missing)
    assert torch.equal(m.conv3_1.weight, sd["features.10.weight"]) and torch.equal(m.conv5_3.bias, sd["features.28.bias"])
    pool5 = torch.randn(2, int(512 * w), 7, 7)
    lin = F.linear(pool5.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])
    conv = m.fc6(pool5).flatten(1)
    torch.testing.assert_close(conv, lin, rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsError, match="do not fit"):
        vgg16_backbone_state(tmp_path / "vgg16-397923af.pth", FCNConfig(num_classes=3, width=0.25, fc_channels=64))


def test_unknown_weights_name_lists_shipped_models():
    with pytest.raises(WeightsError, match="shipped models: fcn8s-compact-camvid"):
        resolve_weights("no-such-model")
