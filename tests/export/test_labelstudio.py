"""Label Studio export: config and brush-RLE pre-annotations checked with label-studio-sdk's decoder,
corrections read back, and (slow) a round trip through a real Label Studio server."""

from __future__ import annotations

import copy
import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from fcn_label.datasets import GroundTruth, detect_layout, load_pairs
from fcn_label.export import export
from fcn_label.train.data import SegmentationDataset
from fcn_label.errors import InputError

from support.export_folder import open_corrections, classes, masks, palette, run_cli

brush = pytest.importorskip("label_studio_sdk.converter.brush", reason='needs label-studio-sdk: pip install "fcn-label[export]"')


def sdk_decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return brush.decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def csv_confidence(pred) -> dict[str, float]:
    with open(pred / "predictions.csv", newline="") as f:
        return {r["mask"][:-4]: float(r["mean_confidence"]) for r in csv.DictReader(f)}


def test_config_and_every_region_decode_to_the_mask(pred_dir, tmp_path):
    r = run_cli("export", str(pred_dir), "--format", "labelstudio", "--out", str(tmp_path / "ls"))
    assert r.returncode == 0, r.stderr
    names, pal, want = classes(pred_dir), palette(pred_dir), masks(pred_dir)
    cfg = ET.fromstring((tmp_path / "ls/config.xml").read_text())
    bl = cfg.find("BrushLabels")
    assert bl.get("toName") == cfg.find("Image").get("name")
    assert [(l.get("value"), l.get("background")) for l in bl.findall("Label")] == \
        [(n, "#%02x%02x%02x" % pal[i]) for i, n in enumerate(names)]
    tasks = json.loads((tmp_path / "ls/tasks.json").read_text())
    model = json.loads((pred_dir / "predictions.json").read_text())["info"]["model"]
    conf = csv_confidence(pred_dir)
    assert sorted(t["data"]["fcn_label_key"] for t in tasks) == sorted(want)
    for t in tasks:
        k = t["data"]["fcn_label_key"]
        (p,) = t["predictions"]
        assert p["model_version"] == model and p["score"] == pytest.approx(conf[k], abs=1e-6)
        got = np.full(want[k].shape, 255, np.uint8)
        for reg in p["result"]:
            assert reg["from_name"] == bl.get("name") and reg["type"] == "brushlabels"
            m = sdk_decode(reg)
            assert not (got[m] != 255).any()  # regions do not overlap
            got[m] = names.index(reg["value"]["brushlabels"][0])
        assert np.array_equal(got, want[k]), k


def _as_ls_export(tasks: list[dict]) -> list[dict]:
    """What Label Studio's Export > JSON gives once a person submitted each pre-annotation."""
    out = []
    for i, t in enumerate(tasks, 1):
        res = copy.deepcopy(t["predictions"][0]["result"])
        for r in res:
            r["origin"] = "prediction-changed"
        out.append({"id": i, "data": t["data"], "predictions": [i],
                    "annotations": [{"id": 10 * i, "result": res, "was_cancelled": False}]})
    return out


def test_corrections_read_back_exactly_the_edited_masks(pred_dir, tmp_path):
    export(pred_dir, "labelstudio", tmp_path / "ls")
    names, want = classes(pred_dir), masks(pred_dir)
    tasks = _as_ls_export(json.loads((tmp_path / "ls/tasks.json").read_text()))
    keys = sorted(want)
    by_key = {t["data"]["fcn_label_key"]: t for t in tasks}
    expected = {k: v.copy() for k, v in want.items()}
    sky, building, car = names.index("sky"), names.index("building"), names.index("car")
    # task 0: the 'sky' region relabelled 'building'; a car painted over a rectangle (a new region)
    t = by_key[keys[0]]
    reg = next(r for r in t["annotations"][0]["result"] if r["value"]["brushlabels"] == ["sky"])
    reg["value"]["brushlabels"] = ["building"]
    expected[keys[0]][want[keys[0]] == sky] = building
    rect = np.zeros(want[keys[0]].shape, np.uint8)
    rect[200:260, 100:300] = 255
    new = copy.deepcopy(reg)
    new.update(id="painted", value={"format": "rle", "rle": [int(v) for v in brush.mask2rle(rect)], "brushlabels": ["car"]})
    t["annotations"][0]["result"].append(new)
    expected[keys[0]][200:260, 100:300] = car
    # task 1: the road region's RLE replaced by a smaller one: the rest becomes unlabelled
    t = by_key[keys[1]]
    road = names.index("road")
    reg = next(r for r in t["annotations"][0]["result"] if r["value"]["brushlabels"] == ["road"])
    smaller = (want[keys[1]] == road)
    smaller[:, : smaller.shape[1] // 2] = False
    reg["value"]["rle"] = [int(v) for v in brush.mask2rle(smaller.astype(np.uint8) * 255)]
    expected[keys[1]][(want[keys[1]] == road) & ~smaller] = 255
    # task 2: a later cancelled annotation is ignored
    t = by_key[keys[2]]
    t["annotations"].append({"id": 99, "result": [], "was_cancelled": True})
    src = tmp_path / "project-1-at-2026.json"
    src.write_text(json.dumps(tasks))
    assert detect_layout(src) == "labelstudio"
    corr = open_corrections(src)
    assert corr.class_names == names and corr.problems == []
    got = {k: load() for k, _, load in corr.items()}
    assert sorted(got) == keys
    for k in keys:
        assert np.array_equal(got[k], expected[k]), k
    photos = pred_dir.parent / "photos"
    pairs, problems, coco = load_pairs(src, images=photos)
    assert problems == [] and len(pairs) == 3
    ds = SegmentationDataset(pairs, coco=coco)
    for i, pair in enumerate(pairs):
        assert np.array_equal(ds.load(i)[1], expected[pair.key])
    gt = GroundTruth(src, images=photos)
    assert gt.layout == "labelstudio" and all(np.array_equal(gt.load(k), expected[k]) for k in keys)


def test_bad_label_studio_export_names_the_task_and_field(pred_dir, tmp_path):
    export(pred_dir, "labelstudio", tmp_path / "ls")
    tasks = _as_ls_export(json.loads((tmp_path / "ls/tasks.json").read_text()))
    tasks[0]["annotations"][0]["result"][0]["value"]["rle"] = "garbage"
    del tasks[1]["annotations"][0]["result"][0]["original_width"]
    tasks[2]["annotations"] = []
    src = tmp_path / "export.json"
    src.write_text(json.dumps(tasks))
    corr = open_corrections(src)
    assert any("task 3: not annotated" in p for p in corr.notes)
    with pytest.raises(InputError, match=r"task 1: field 'annotations.result\[0\].value.rle'"):
        corr.mask(tasks[0]["data"]["fcn_label_key"])
    (tmp_path / "bad.json").write_text('[{"data": {}, "annotations": [')
    with pytest.raises(InputError, match="bad.json: malformed JSON"):
        open_corrections(tmp_path / "bad.json", "labelstudio")
    r = run_cli("evaluate", "--pred", str(pred_dir), "--gt", str(src), "--out", str(tmp_path / "rep"))
    assert "Traceback" not in r.stderr and "value.rle" in r.stderr


# A real Label Studio server: the `label_studio` fixture (tests/conftest.py).


@pytest.mark.integration
def test_real_label_studio_round_trip(label_studio, pred_dir, tmp_path):
    ls = label_studio.client
    export(pred_dir, "labelstudio", tmp_path / "ls")
    names, want = classes(pred_dir), masks(pred_dir)
    tasks = json.loads((tmp_path / "ls/tasks.json").read_text())
    project = ls.projects.create(title="fcn-label round trip", label_config=(tmp_path / "ls/config.xml").read_text())
    ls.projects.import_tasks(id=project.id, request=tasks)
    stored = list(ls.tasks.list(project=project.id, fields="all"))
    assert sorted(t.data["fcn_label_key"] for t in stored) == sorted(want)
    model = json.loads((pred_dir / "predictions.json").read_text())["info"]["model"]
    for t in stored:
        k = t.data["fcn_label_key"]
        (p,) = t.predictions
        assert p.model_version == model and p.score == pytest.approx(csv_confidence(pred_dir)[k], abs=1e-6)
        got = np.full(want[k].shape, 255, np.uint8)
        for reg in p.result:
            got[sdk_decode(reg)] = names.index(reg["value"]["brushlabels"][0])
        assert np.array_equal(got, want[k]), k
    # a person submits the first task with 'sky' relabelled 'building'; the others stay unannotated
    t = next(t for t in stored if t.data["fcn_label_key"] == sorted(want)[0])
    res = copy.deepcopy(t.predictions[0].result)
    for r in res:
        if r["value"]["brushlabels"] == ["sky"]:
            r["value"]["brushlabels"] = ["building"]
    ls.annotations.create(id=t.id, result=res, was_cancelled=False, ground_truth=False)
    data = b"".join(ls.projects.exports.download_sync(id=project.id, export_type="JSON", download_all_tasks=True))
    src = tmp_path / "project-export.json"
    src.write_bytes(data)
    corr = open_corrections(src)
    k = sorted(want)[0]
    expected = want[k].copy()
    expected[want[k] == names.index("sky")] = names.index("building")
    assert sorted(corr.entries) == [k] and corr.class_names == names
    assert np.array_equal(corr.mask(k), expected)
    assert sum("not annotated" in p for p in corr.notes) == len(want) - 1
