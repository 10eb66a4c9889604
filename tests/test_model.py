"""The FCN nets against the paper's reference definition, written out independently here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_label.model import FCN, FCNConfig, bilinear_kernel

VGG = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
       ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
       ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
       ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]


def expected_keys(arch, n):
    """Parameter names and shapes of the Caffe FCN nets as ported by pytorch-fcn."""
    keys = {}
    for name, i, o in VGG:
        keys[f"{name}.weight"] = (o, i, 3, 3)
        keys[f"{name}.bias"] = (o,)
    keys.update({"fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,), "fc7.weight": (4096, 4096, 1, 1),
                 "fc7.bias": (4096,), "score_fr.weight": (n, 4096, 1, 1), "score_fr.bias": (n,)})
    if arch == "fcn32s":
        keys["upscore.weight"] = (n, n, 64, 64)
    else:
        keys.update({"score_pool4.weight": (n, 512, 1, 1), "score_pool4.bias": (n,), "upscore2.weight": (n, n, 4, 4)})
        if arch == "fcn16s":
            keys["upscore16.weight"] = (n, n, 32, 32)
        else:
            keys.update({"score_pool3.weight": (n, 256, 1, 1), "score_pool3.bias": (n,),
                         "upscore_pool4.weight": (n, n, 4, 4), "upscore8.weight": (n, n, 16, 16)})
    return keys


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_full_vgg16_parameter_names_match_pytorch_fcn(arch):
    torch.manual_seed(0)
    sd = {k: tuple(v.shape) for k, v in FCN(FCNConfig(arch=arch, num_classes=21)).state_dict().items()}
    assert sd == expected_keys(arch, 21)


def reference_forward(sd, x, arch, n):
    """The Caffe net with F.* calls: conv1_1 pad 100, ceil-mode pools, crops 5/9/31 (8s), 5/27 (16s), 19 (32s)."""
    h = x
    feats = {}
    for b, convs in enumerate([2, 2, 3, 3, 3], 1):
        for i in range(1, convs + 1):
            name = f"conv{b}_{i}"
            h = F.relu(F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=100 if name == "conv1_1" else 1))
        h = F.max_pool2d(h, 2, 2, ceil_mode=True)
        feats[b] = h
    h = F.relu(F.conv2d(h, sd["fc6.weight"], sd["fc6.bias"]))
    h = F.relu(F.conv2d(h, sd["fc7.weight"], sd["fc7.bias"]))
    h = F.conv2d(h, sd["score_fr.weight"], sd["score_fr.bias"])
    H, W = x.shape[-2:]
    if arch == "fcn32s":
        h = F.conv_transpose2d(h, sd["upscore.weight"], stride=32)
        return h[:, :, 19:19 + H, 19:19 + W]
    up = F.conv_transpose2d(h, sd["upscore2.weight"], stride=2)
    s4 = F.conv2d(feats[4], sd["score_pool4.weight"], sd["score_pool4.bias"])
    h = up + s4[:, :, 5:5 + up.shape[2], 5:5 + up.shape[3]]
    if arch == "fcn16s":
        h = F.conv_transpose2d(h, sd["upscore16.weight"], stride=16)
        return h[:, :, 27:27 + H, 27:27 + W]
    up = F.conv_transpose2d(h, sd["upscore_pool4.weight"], stride=2)
    s3 = F.conv2d(feats[3], sd["score_pool3.weight"], sd["score_pool3.bias"])
    h = up + s3[:, :, 9:9 + up.shape[2], 9:9 + up.shape[3]]
    h = F.conv_transpose2d(h, sd["upscore8.weight"], stride=8)
    return h[:, :, 31:31 + H, 31:31 + W]


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_caffe_net_matches_reference_forward(arch):
    torch.manual_seed(1)
    m = FCN(FCNConfig(arch=arch, num_classes=5, width=0.125, fc_channels=32)).eval()
    for p in m.parameters():  # score layers start at zero; make every path matter
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        ours = m(x)
        ref = reference_forward(m.state_dict(), x, arch, 5)
    assert ours.shape == (2, 5, 45, 61)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["caffe", "same"])
@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_size_equals_input_size(arch, padding):
    m = FCN(FCNConfig(arch=arch, num_classes=3, width=0.0625, fc_channels=8, padding=padding,
                      batch_norm=padding == "same")).eval()
    with torch.no_grad():
        for hw in [(1, 1), (2, 3), (31, 33), (333, 257), (375, 500), (64, 64)]:
            assert m(torch.zeros(1, 3, *hw)).shape == (1, 3, *hw)


def test_bilinear_kernel_matches_bilinear_interpolation():
    """A transposed conv (k=2f, stride f) with the kernel is bilinear upsampling (align_corners=False)."""
    f = 4
    k = bilinear_kernel(2, 2, 2 * f)
    assert torch.equal(k[0, 1], torch.zeros(2 * f, 2 * f))  # channels stay separate
    x = torch.randn(1, 2, 9, 11)
    up = F.conv_transpose2d(x, k, stride=f, padding=f // 2)
    ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
    # identical away from the border, where interpolate clamps and the transposed conv sees zeros
    torch.testing.assert_close(up[..., f:-f, f:-f], ref[..., f:-f, f:-f], rtol=1e-5, atol=1e-5)


def test_same_padding_skips_are_aligned():
    """With zero score weights except one skip, FCN-8s output is a shift-free upsampling of that skip."""
    m = FCN(FCNConfig(arch="fcn8s", num_classes=1, width=0.0625, fc_channels=8, padding="same")).eval()
    # Pass channel 0 straight through the backbone to score_pool3 (score_fr and score_pool4 stay zero):
    # the output is then the bilinear upsampling of max-pooled input, and an 8x8 square on the
    # stride-8 grid must come back centred on itself, with no half-pixel shift.
    # Identity-like path: make every conv pass channel 0 through (centre tap 1), score_pool3 read channel 0.
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Conv2d) and name.startswith("conv"):
                mod.weight.zero_()
                mod.weight[0, 0, 1, 1] = 1.0
            if name == "score_pool3":
                mod.weight.zero_()
                mod.weight[0, 0] = 1.0
    x = torch.zeros(1, 3, 64, 96)
    x[0, 0, 24:32, 40:48] = 1.0  # an 8x8 square aligned to the stride-8 grid
    with torch.no_grad():
        y = m(x)[0, 0]
    ys, xs = np.unravel_index(int(y.argmax()), y.shape)
    assert 24 <= ys < 32 and 40 <= xs < 48
    sq = y[20:36, 36:52]
    torch.testing.assert_close(sq, sq.flip(0).flip(1))  # symmetric about the square's centre: no shift
    assert y[27:29, 43:45].min() > 0.85 and y[:12].abs().max() < 1e-6


def test_config_errors_list_choices():
    with pytest.raises(ValueError, match="fcn32s, fcn16s, fcn8s"):
        FCNConfig(arch="fcn4s")


def test_fold_batch_norm_keeps_the_outputs():
    from support.helpers import make_checkpoint

    ck = make_checkpoint("same", bn=True)  # random running statistics; random affine terms below
    ref = ck.build()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    folded = FCN(ref.config)
    folded.load_state_dict(ref.state_dict())
    folded.eval().fold_batch_norm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.conv1_1.bias is not None and folded.fc7.bias is not None
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        a, b = ref(x), folded(x)
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item())
    plain = FCN(FCNConfig(width=0.0625, fc_channels=16))
    assert plain.fold_batch_norm() is plain  # nothing to fold
