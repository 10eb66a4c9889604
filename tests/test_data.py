"""Dataset layouts, class files and paired augmentation."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_label.classes import mask_palette, read_class_file
from fcn_label.datasets import load_pairs
from fcn_label.train import SegmentationDataset
from fcn_label.train.augment import Augment
from fcn_label.images import InputError

from _synth import make_arrays


def _rle(binary: np.ndarray) -> dict:
    """Uncompressed COCO RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = binary.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(binary.shape), "counts": counts}


def _four_layouts(root: Path) -> dict[str, Path]:
    """One dataset of 3 classes + a crowd (ignore) region, written as VOC, folders, list file and COCO JSON."""
    triples = make_arrays(4, classes=3, seed=3)
    for _, _, mask in triples:
        mask[-4:, -6:] = 255  # a crowd region: iscrowd in COCO, the ignore label elsewhere
    voc, folders, lst, coco = root / "voc", root / "folders", root / "list", root / "coco"
    for d in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation",
              folders / "images" / "sub", folders / "masks" / "sub", lst / "img", lst / "ann", coco / "images"):
        d.mkdir(parents=True)
    images, anns, lines = [], [], []
    for k, (stem, img, mask) in enumerate(triples):
        jpg = voc / "JPEGImages" / f"{stem}.jpg"
        Image.fromarray(img).save(jpg, quality=95)
        png = voc / "SegmentationClass" / f"{stem}.png"
        Image.fromarray(mask, mode="L").save(png)
        for d_img, d_msk in ((folders / "images" / "sub", folders / "masks" / "sub"), (lst / "img", lst / "ann")):
            shutil.copy(jpg, d_img)
            shutil.copy(png, d_msk)
        shutil.copy(jpg, coco / "images")
        lines.append(f"img/{stem}.jpg ann/{stem}.png")
        images.append({"id": k + 1, "file_name": f"{stem}.jpg", "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        for c, cat in ((1, 7), (2, 3)):  # category ids out of order: classes follow ascending id, so 3 -> 1, 7 -> 2
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": _rle(mask == (2 if cat == 7 else 1))})
        anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 3, "iscrowd": 1,
                     "segmentation": _rle(mask == 255)})
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(t[0] for t in triples) + "\n")
    (lst / "train.txt").write_text("\n".join(lines) + "\n")
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    (coco / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"voc": voc, "folders": folders, "list": lst / "train.txt", "coco": coco / "instances.json"}


def _loaded(source: Path, split: str | None = None) -> dict[str, tuple[bytes, bytes]]:
    pairs, problems, coco = load_pairs(source, split=split)
    assert not problems
    ds = SegmentationDataset(pairs, coco=coco)
    out = {}
    for i, p in enumerate(ds.pairs):
        img, mask = ds.load(i)
        out[p.image.stem] = (img.tobytes(), mask.tobytes())
    return out


def test_every_layout_loads_the_same_pairs(tmp_path):
    src = _four_layouts(tmp_path)
    voc = _loaded(src["voc"], split="train")
    assert len(voc) == 4
    masks = [np.frombuffer(m, np.uint8) for _, m in voc.values()]
    assert all({0, 1, 2, 255} <= set(np.unique(m)) for m in masks)  # every class and the ignore label present
    assert _loaded(src["voc"]) == voc  # no split: every mask in SegmentationClass/
    assert _loaded(src["folders"]) == voc
    assert _loaded(src["list"]) == voc
    # COCO: categories 3 and 7 become classes 1 and 2, iscrowd becomes the ignore label
    assert _loaded(src["coco"]) == voc


def test_missing_partners_are_reported_with_their_names(tmp_path):
    src = _four_layouts(tmp_path)
    (src["folders"] / "masks" / "sub" / "img01.png").unlink()
    pairs, problems, _ = load_pairs(src["folders"])
    assert len(pairs) == 3 and len(problems) == 1 and "img01.jpg" in problems[0]


def test_class_file_names_and_optional_palette(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# road scenes\nsky\ntraffic light\nroad\n")
    assert read_class_file(f) == (["sky", "traffic light", "road"], None)
    f.write_text("sky 128 128 128\ntraffic light 250 170 30\n")
    assert read_class_file(f) == (["sky", "traffic light"], [(128, 128, 128), (250, 170, 30)])
    f.write_text("sky 128 128 128\nroad\n")
    with pytest.raises(InputError, match=r"classes.txt: 1 of 2 classes have a colour"):
        read_class_file(f)
    f.write_text("sky 128 128 300\n")
    with pytest.raises(InputError, match=r"classes.txt:1: colour"):
        read_class_file(f)
    with pytest.raises(InputError, match="not found"):
        read_class_file(tmp_path / "nope.txt")


def test_mask_palette_read_from_palette_png(tmp_path):
    im = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
    im.save(tmp_path / "m.png")
    pal = mask_palette(tmp_path / "m.png")
    assert pal[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)] and len(pal) == 256
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "l.png")
    assert mask_palette(tmp_path / "l.png") is None


def test_augmentation_moves_image_and_mask_together():
    """Scale, crop and flip the same way: the class read back from each pixel's colour matches the mask."""
    _, img, mask = make_arrays(1, classes=3, seed=5)[0]
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    img = colours[mask]
    aug = Augment(crop=(40, 56), scale=(0.6, 1.8), jitter=0.0, blur_p=0.0, ignore_index=255)
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    m = torch.from_numpy(mask.astype(np.int64))
    padded = 0
    for seed in range(6):
        a_img, a_mask = aug(t, m, random.Random(seed))
        assert a_img.shape == (3, 40, 56) and a_mask.shape == (40, 56)
        a_mask = a_mask.numpy()
        assert set(np.unique(a_mask)) <= {0, 1, 2, 255}  # nearest: no blended labels
        valid = a_mask != 255
        read = np.abs(a_img.permute(1, 2, 0).numpy()[:, :, None, :] * 255 - colours[None, None]).sum(-1).argmin(-1)
        assert (read[valid] == a_mask[valid]).mean() > 0.9, seed  # bilinear image edges may differ by a pixel
        # the source has no ignore pixels: every ignore pixel is padding, grey in the image
        assert np.allclose(a_img.numpy()[:, ~valid], 0.45)
        padded += int((~valid).any())
    assert 0 < padded < 6  # both small (padded) and large (cropped) scales were drawn
