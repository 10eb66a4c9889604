"""A labelme2voc output folder trains and evaluates with its class_names.txt found like classes.txt."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from support.synth import make_arrays, tiny_config
from fcn_label.classes import find_class_file, read_class_file
from fcn_label.evaluate import GroundTruth, resolve_classes
from fcn_label.train import Trainer


def labelme2voc_folder(root, header: str):
    """What labelme's examples/semantic_segmentation/labelme2voc.py writes (ignore pixels: -1 saved as 255)."""
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassVisualization"):
        (root / d).mkdir(parents=True)
    for stem, img, mask in make_arrays(4, classes=3, ignore_border=True):
        Image.fromarray(img).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        m = Image.fromarray(mask, mode="P")
        m.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        m.save(root / "SegmentationClass" / f"{stem}.png")
        Image.fromarray(img).save(root / "SegmentationClassVisualization" / f"{stem}.jpg")
    (root / "class_names.txt").write_text(header + "_background_\ncat\ndog")  # labelme: no final newline
    return root


@pytest.mark.parametrize("header", ["", "__ignore__\n"])
def test_finetune_finds_labelme_class_names(tmp_path, header):
    root = labelme2voc_folder(tmp_path / "voc", header)
    logs = []
    cfg = tiny_config(root, tmp_path / "run", num_classes=None)
    t = Trainer(cfg, log=logs.append)
    t.setup()
    assert t.classes == ["background", "cat", "dog"]
    assert any(f"from {root / 'class_names.txt'}" in m for m in logs), logs
    # 255 (labelme's -1 / __ignore__) is the ignore label: the border row counts for no class
    counts = np.zeros(3, np.int64)
    for p in t.train_ds.pairs:
        counts += np.bincount(np.asarray(Image.open(p.mask)).ravel(), minlength=256)[:3]
    assert list(t.class_counts) == list(counts)


def test_evaluate_finds_labelme_class_names(tmp_path):
    root = labelme2voc_folder(tmp_path / "voc", "__ignore__\n")
    assert find_class_file(root) == root / "class_names.txt"
    assert read_class_file(root / "class_names.txt")[0] == ["background", "cat", "dog"]
    spec = resolve_classes(gt=GroundTruth(root))
    assert spec.names == ["background", "cat", "dog"]
