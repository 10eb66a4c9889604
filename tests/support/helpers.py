"""Test helpers shared by several test modules: a tiny random FCN checkpoint, smooth random
images, and the plain one-image reference prediction every fast path is compared against."""

import io

import numpy as np
import torch
from PIL import Image

from fcn_label.model import FCN, FCNConfig
from fcn_label.checkpoint import Checkpoint

PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]


def make_checkpoint(padding="caffe", bn=False, n=5, seed=0):
    torch.manual_seed(seed)
    cfg = FCNConfig(arch="fcn8s", num_classes=n, width=0.0625, fc_channels=16, padding=padding, batch_norm=bn)
    m = FCN(cfg)
    for name, p in m.named_parameters():
        if not name.startswith("upscore"):
            p.data.normal_(0, 0.3)
    if bn:
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
    return Checkpoint(cfg, m.state_dict(), [f"class{i}" for i in range(n)], PALETTE[:n], ignore_index=255)


def rand_image(h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(1, h // 8) + 1, max(1, w // 8) + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def one_at_a_time(ck, img, model=None):
    """The plain reference: normalise by hand, run the model alone, argmax."""
    m = model if model is not None else ck.build()
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return m((x - mean) / std).argmax(1)[0].numpy()


def write_vgg16_file(path):
    """A torchvision-VGG16-shaped state dict (conv n filled with n, fc6 rows one random vector) that stays
    small on disk (expanded tensors); returns fc6's row."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's features.N of each conv
    sd = {}
    for n, (i, (cin, cout)) in enumerate(zip(idx, convs)):
        sd[f"features.{i}.weight"] = torch.full((), float(n + 1)).expand(cout, cin, 3, 3)
        sd[f"features.{i}.bias"] = torch.full((cout,), -float(n + 1))
    row = torch.randn(25088)
    sd["classifier.0.weight"] = row.expand(4096, 25088)
    sd["classifier.0.bias"] = torch.arange(4096.0)
    sd["classifier.3.weight"] = torch.full((), 0.5).expand(4096, 4096)
    sd["classifier.3.bias"] = torch.zeros(4096)
    sd["classifier.6.weight"] = torch.zeros(()).expand(1000, 4096)
    sd["classifier.6.bias"] = torch.zeros(1000)
    torch.save(sd, path)
    return row


def tempered(seed: int):
    """A tiny random FCN whose score layers are scaled down: mean confidence 0.6-0.8, not 1.0, so images differ."""
    ck = make_checkpoint(n=5, seed=seed)
    for k in list(ck.state_dict):
        if k.startswith("score"):
            ck.state_dict[k] = ck.state_dict[k] * 1e-5
    return ck


def voc_colour(i: int) -> tuple[int, int, int]:
    """PASCAL VOC's colour map, the bit-interleaving definition from its devkit (a reference the
    tests write out, independent of fcn_label.classes.voc_palette)."""
    r = g = b = 0
    for j in range(8):
        r |= ((i >> 0) & 1) << (7 - j)
        g |= ((i >> 1) & 1) << (7 - j)
        b |= ((i >> 2) & 1) << (7 - j)
        i >>= 3
    return r, g, b


def jpeg_folder(d):
    """Plain JPEGs (baseline, progressive, 4:2:0, greyscale; repeated sizes so they batch) and the files that
    must not take the device path (predict --gpu-jpeg): CMYK, EXIF-rotated, truncated, a PNG, a text file
    named .jpg; returns the plain ones."""
    d.mkdir()
    plain = []
    for i, (h, w) in enumerate([(37, 53), (37, 53), (64, 48), (37, 53), (64, 48), (20, 26)]):
        p = d / f"plain{i}.jpg"
        Image.fromarray(rand_image(h, w, i)).save(p, quality=90, progressive=i == 1, subsampling=2 if i == 2 else 0)
        plain.append(p)
    Image.fromarray(rand_image(30, 40, 9)).convert("L").save(d / "grey.jpg")
    plain.append(d / "grey.jpg")
    rgb = rand_image(30, 50, 1)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(d / "rot.jpg", exif=exif)
    buf = io.BytesIO()
    Image.fromarray(rand_image(40, 60, 3)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 9 // 10])  # header intact
    # decoded by Pillow after plain2 and plain4 (the same size) were decoded on the device: they share a batch
    Image.fromarray(rand_image(64, 48, 5)).save(d / "strip.png")
    (d / "notes.jpg").write_text("not an image")
    return plain
