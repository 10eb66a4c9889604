"""Class files (ours and labelme's) and the one resolver of names, colours and the ignore label."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcn_label.classes import (CAMVID_CLASSES, VOC_CLASSES, mask_palette, read_class_file, read_class_spec,
                               resolve_classes)
from fcn_label.images import InputError


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


def test_labelme_class_names_txt_gives_background_and_the_ignore_label(tmp_path):
    """labelme's class_names.txt: '__ignore__' is not a class but the ignore label (labelme2voc writes 255),
    '_background_' is class 0."""
    (tmp_path / "class_names.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    spec = read_class_spec(tmp_path / "class_names.txt")
    assert (spec.names, spec.ignore_index) == (["background", "cat", "dog"], 255)
    found = resolve_classes(dataset=tmp_path)  # found beside the data like classes.txt
    assert (found.names, found.ignore_index, found.source) == (["background", "cat", "dog"], 255,
                                                               str(tmp_path / "class_names.txt"))
    (tmp_path / "class_names.txt").write_text("_background_\ncat\n")
    assert read_class_spec(tmp_path / "class_names.txt").ignore_index is None


def test_resolver_order_explicit_then_dataset_then_layout_then_count(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert resolve_classes(dataset=tmp_path).names == ["a", "b", "c"]
    assert resolve_classes(names=["x", "y", "z"], dataset=tmp_path).names == ["x", "y", "z"]
    assert resolve_classes(dataset=tmp_path, dataset_names=["p", "q", "r"]).names == ["p", "q", "r"]
    # a file that disagrees with --num-classes is passed over
    assert resolve_classes(4, dataset=tmp_path).names == ["class_0", "class_1", "class_2", "class_3"]
    voc = tmp_path / "voc"
    voc.mkdir()
    assert resolve_classes(dataset=voc, layout="voc").names == list(VOC_CLASSES)
    assert resolve_classes(dataset=voc, layout="voc", labels=[0, 1, 4]).names == [f"class_{i}" for i in range(5)]
    assert resolve_classes(11, dataset=tmp_path / "CamVid" / "train.txt").names == list(CAMVID_CLASSES)
    with pytest.raises(InputError, match="lists 3 names"):
        resolve_classes(2, classes_file=tmp_path / "classes.txt")
    with pytest.raises(InputError, match="cannot tell the number of classes"):
        resolve_classes(dataset=voc)
