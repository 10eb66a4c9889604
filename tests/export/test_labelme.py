"""LabelMe export: polygons rasterised back by an independent polygon fill, and corrections read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fcn_label.datasets import GroundTruth, detect_layout, load_pairs
from fcn_label.export import export
from fcn_label.train.data import SegmentationDataset
from fcn_label.export.labelme import mask_to_shapes
from fcn_label.errors import InputError

from support.export_folder import fill, open_corrections, classes, masks, run_cli

pytest.importorskip("cv2", reason='labelme export needs OpenCV: pip install "fcn-label[export]"')


@pytest.mark.parametrize("which", ["examples", "camvid"])
def test_polygons_rasterise_back_to_99_percent(which, request, tmp_path):
    pred = request.getfixturevalue("pred_dir" if which == "examples" else "camvid_pred")
    r = run_cli("export", str(pred), "--format", "labelme", "--out", str(tmp_path / "lm"), "--tolerance", "1")
    assert r.returncode == 0, r.stderr
    names = classes(pred)
    assert (tmp_path / "lm/labels.txt").read_text().split("\n")[:-1] == names
    agree = total = 0
    for k, want in masks(pred).items():
        doc_path = tmp_path / f"lm/{k}.json"
        doc = json.loads(doc_path.read_text())
        assert doc["imageData"] is None and not Path(doc["imagePath"]).is_absolute()
        assert (doc_path.parent / doc["imagePath"]).resolve().is_file()  # the photo, relative to the JSON
        got = fill(doc, names)
        a = (got == want).mean()
        assert a >= 0.99, (k, a)
        agree += (got == want).sum()
        total += want.size
    print(f"{which}: pixel agreement {agree / total:.5f} at tolerance 1.0")


def test_tolerance_zero_is_exact_with_nested_holes(tmp_path):
    # a ring of class 1 around a ring of class 2 around a blob of class 1, plus 1-pixel and diagonal bits
    m = np.zeros((60, 80), np.uint8)
    m[5:55, 5:60] = 1
    m[15:45, 15:50] = 2
    m[25:35, 25:40] = 1
    m[2, 70] = 3
    m[[50, 51, 52], [70, 71, 72]] = 3
    m[40:50, 65:75] = 2
    m[44:46, 69:71] = 0  # a hole with class 0 inside class 2
    names = ["a", "b", "c", "d"]
    doc = {"imageHeight": 60, "imageWidth": 80, "shapes": mask_to_shapes(m, names, 0)}
    assert np.array_equal(fill(doc, names), m)


def test_corrections_read_back_exactly_the_edited_masks(pred_dir, tmp_path):
    from scipy import ndimage

    export(pred_dir, "labelme", tmp_path / "lm", tolerance=0)
    names, want = classes(pred_dir), masks(pred_dir)
    key = sorted(want)[1]
    p = tmp_path / f"lm/{key}.json"
    doc = json.loads(p.read_text())
    # a person relabels the largest 'car' region as 'pedestrian'
    i = next(i for i, s in enumerate(doc["shapes"]) if s["label"] == "car")
    x, y = map(int, doc["shapes"][i]["points"][0])
    doc["shapes"][i]["label"] = "pedestrian"
    p.write_text(json.dumps(doc))
    expected = {k: v.copy() for k, v in want.items()}
    car, ped = names.index("car"), names.index("pedestrian")
    comp, _ = ndimage.label(want[key] == car, structure=np.ones((3, 3)))  # 8-connected, as traced
    assert comp[y, x] > 0
    expected[key][comp == comp[y, x]] = ped
    assert (expected[key] != want[key]).sum() > 50
    src = tmp_path / "lm"
    assert detect_layout(src) == "labelme"
    corr = open_corrections(src)
    assert corr.class_names == names
    for k, img, load in corr.items():
        assert np.array_equal(load(), expected[k]), k
        assert img is not None and img.is_file()
    pairs, problems, coco = load_pairs(src)
    assert problems == [] and len(pairs) == 3
    ds = SegmentationDataset(pairs, coco=coco)
    for i, pair in enumerate(pairs):
        assert np.array_equal(ds.load(i)[1], expected[pair.key])
    gt = GroundTruth(src)
    assert gt.layout == "labelme" and all(np.array_equal(gt.load(k), expected[k]) for k in expected)


def test_bad_labelme_file_is_one_line_and_the_rest_is_read(pred_dir, tmp_path):
    export(pred_dir, "labelme", tmp_path / "lm")
    keys = sorted(masks(pred_dir))
    p = tmp_path / f"lm/{keys[0]}.json"
    doc = json.loads(p.read_text())
    doc["shapes"][2]["points"] = [[1, 2], "x"]
    p.write_text(json.dumps(doc))
    (tmp_path / f"lm/{keys[1]}.json").write_text("{not json")
    corr = open_corrections(tmp_path / "lm")
    assert sorted(corr.entries) == keys[2:]
    assert any(f"{keys[0]}.json: field 'shapes[2].points'" in s for s in corr.problems)
    assert any(f"{keys[1]}.json: malformed JSON" in s for s in corr.problems)
    doc = json.loads((tmp_path / f"lm/{keys[2]}.json").read_text())
    doc["shapes"][0]["label"] = "unicorn"
    (tmp_path / f"lm/{keys[2]}.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"field 'shapes\[0\].label' 'unicorn' is not a class"):
        open_corrections(tmp_path / "lm").mask(keys[2])
