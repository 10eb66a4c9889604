"""Class files (ours and labelme's); the explicit spec, the candidate sources and the palette resolver."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcn_label.classes import (CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, Candidate, ClassSpec, choose_classes,
                               class_file_beside, dataset_categories, explicit_classes, mask_palette,
                               read_class_file, read_class_spec, resolve_palette, voc_classes)
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
    found = choose_classes(None, [class_file_beside(tmp_path)])  # found beside the data like classes.txt
    assert (found.names, found.ignore_index, found.source) == (["background", "cat", "dog"], 255,
                                                               str(tmp_path / "class_names.txt"))
    (tmp_path / "class_names.txt").write_text("_background_\ncat\n")
    assert read_class_spec(tmp_path / "class_names.txt").ignore_index is None


def _names(explicit=None, dataset=None, layout=None, dataset_names=None, num_classes=None, labels=None, log=None):
    """The order train and evaluate list their candidates in."""
    count = num_classes or (max(labels) + 1 if labels else None)
    cands = [dataset_categories(dataset_names, dataset), class_file_beside(dataset), voc_classes(layout, dataset, count)]
    return choose_classes(explicit, cands, num_classes=num_classes, labels=labels, log=log).names


def test_choice_order_explicit_then_dataset_then_layout_then_count(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert _names(dataset=tmp_path) == ["a", "b", "c"]
    assert _names(explicit_classes(names=["x", "y", "z"]), dataset=tmp_path) == ["x", "y", "z"]
    assert _names(dataset=tmp_path, dataset_names=["p", "q", "r"]) == ["p", "q", "r"]
    # a file that disagrees with --num-classes is passed over, and the log says so
    said = []
    assert _names(dataset=tmp_path, num_classes=4, log=said.append) == ["class_0", "class_1", "class_2", "class_3"]
    assert said == [f"warning: {tmp_path / 'classes.txt'} lists 3 classes but --num-classes is 4; not used"]
    voc = tmp_path / "voc"
    voc.mkdir()
    assert _names(dataset=voc, layout="voc") == list(VOC_CLASSES)
    assert _names(dataset=voc, layout="voc", labels=[0, 1, 4]) == [f"class_{i}" for i in range(5)]
    assert _names(dataset=voc, layout="voc", num_classes=21, labels=[0, 1, 4]) == list(VOC_CLASSES)
    # CamVid is named by the classes.txt it ships beside its list files, not by its path
    camvid = tmp_path / "CamVid"
    camvid.mkdir()
    assert _names(dataset=camvid / "train.txt", num_classes=11) == [f"class_{i}" for i in range(11)]
    (camvid / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")
    assert _names(dataset=camvid / "train.txt", num_classes=11) == list(CAMVID_CLASSES)
    with pytest.raises(InputError, match="lists 3 names"):
        explicit_classes(2, classes_file=tmp_path / "classes.txt")
    with pytest.raises(InputError, match="cannot tell the number of classes"):
        _names(dataset=voc)


def test_candidates_are_asked_in_order_and_only_until_one_fits():
    asked = []

    def cand(name, n):
        return Candidate(lambda: asked.append(name) or (ClassSpec([name] * n, None, name) if n else None))

    spec = choose_classes(None, [cand("none", 0), cand("two", 2), cand("three", 3), cand("never", 3)], num_classes=3)
    assert (spec.source, asked) == ("three", ["none", "two", "three"])


def test_explicit_spec_checks_the_model():
    class Ck:
        class config:
            num_classes = 2
        classes = ["a", "b"]
        palette = [(1, 2, 3), (4, 5, 6)]

    spec = explicit_classes(checkpoint=Ck())
    assert (spec.names, spec.palette, spec.source) == (["a", "b"], [(1, 2, 3), (4, 5, 6)], "the model")
    with pytest.raises(InputError, match="the model predicts 2 classes"):
        explicit_classes(3, checkpoint=Ck())
    with pytest.raises(InputError, match="lists 3 names but the model predicts 2"):
        explicit_classes(names=["x", "y", "z"], checkpoint=Ck())


def test_palette_order(tmp_path):
    class Init:
        classes = ["a", "b"]
        palette = [(9, 9, 9), (8, 8, 8)]

    given = [(1, 1, 1), (2, 2, 2)]
    assert resolve_palette(ClassSpec(["a", "b"], [(5, 5, 5)] * 2, "f"), given, init=Init()).palette == given
    assert resolve_palette(ClassSpec(["a", "b"], [(5, 5, 5)] * 2, "f"), init=Init()).palette == [(5, 5, 5)] * 2
    assert resolve_palette(ClassSpec(["a", "b"], None, "f"), init=Init()).palette == Init.palette
    Image.new("P", (2, 2)).save(tmp_path / "m.png")
    im = Image.open(tmp_path / "m.png")
    pal = resolve_palette(ClassSpec(["a", "c"], None, "f"), init=Init(), first_mask=tmp_path / "m.png").palette
    assert len(pal) == 256 and pal[:1] == [tuple(im.getpalette()[:3])]
    assert resolve_palette(ClassSpec(list(CAMVID_CLASSES), None, "f")).palette == list(CAMVID_PALETTE)
    assert resolve_palette(ClassSpec(["a"], None, "f")).palette is None
