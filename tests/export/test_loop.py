"""The loop through the command line: predict -> export -> edit -> finetune and evaluate --gt read the edits."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fcn_label.cli import run_cli
from fcn_label.checkpoint import load_checkpoint

from support.export_folder import classes, masks, palette

TINY = ["--set", "width=0.0625", "--set", "fc_channels=16", "--set", "crop=32x48", "--set", "scale=0.75,1.5",
        "--set", "threads=1"]


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        run_cli(args)
    return e.value.code or 0


@pytest.mark.parametrize("fmt", ["cvat", "labelme", "labelstudio"])
def test_corrections_feed_finetune_and_evaluate(fmt, pred_dir, tmp_path, capsys):
    pytest.importorskip("cv2")
    pytest.importorskip("label_studio_sdk")
    names, want = classes(pred_dir), masks(pred_dir)
    photos = pred_dir.parent / "photos"
    out = tmp_path / fmt
    assert _cli(["export", str(pred_dir), "--format", fmt, "--out", str(out), "--tolerance", "0"]) == 0
    key = sorted(want)[0]
    car = names.index("car")
    expected = {k: v.copy() for k, v in want.items()}
    if fmt == "cvat":  # repaint a rectangle as car
        p = out / f"SegmentationClass/{key}.png"
        rgb = np.array(Image.open(p).convert("RGB"))
        rgb[40:120, 300:420] = palette(pred_dir)[car]
        Image.fromarray(rgb).save(p)
        expected[key][40:120, 300:420] = car
        gt = out
    elif fmt == "labelme":  # a rectangle shape labelled car, drawn last
        p = out / f"{key}.json"
        doc = json.loads(p.read_text())
        doc["shapes"].append({"label": "car", "points": [[300, 40], [419, 119]], "shape_type": "rectangle",
                              "group_id": None, "description": "", "flags": {}, "mask": None})
        p.write_text(json.dumps(doc))
        expected[key][40:120, 300:420] = car
        gt = out
    else:  # what Label Studio exports after a person relabelled the car region as pedestrian
        tasks = json.loads((out / "tasks.json").read_text())
        for i, t in enumerate(tasks, 1):
            res = t["predictions"][0]["result"]
            if t["data"]["fcn_label_key"] == key:
                for r in res:
                    if r["value"]["brushlabels"] == ["car"]:
                        r["value"]["brushlabels"] = ["pedestrian"]
                expected[key][want[key] == car] = names.index("pedestrian")
            t.update(id=i, annotations=[{"id": i, "result": res, "was_cancelled": False}])
        gt = tmp_path / "project-1.json"
        gt.write_text(json.dumps(tasks))
    changed = sum(int((expected[k] != want[k]).sum()) for k in want)
    assert changed > 100
    capsys.readouterr()
    # evaluate --gt: predict's masks against the corrections; pixel accuracy is the unchanged fraction
    assert _cli(["evaluate", "--pred", str(pred_dir), "--gt", str(gt), "--images", str(photos),
                 "-f", "json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    total = sum(v.size for v in want.values())
    assert report["summary"]["pixel_accuracy"] == pytest.approx(1 - changed / total, abs=1e-9)
    # predict --gt: the same comparison per image, in predictions.csv (NumPy gives the reference)
    again = tmp_path / "again"
    assert _cli(["predict", str(photos), "--out", str(again), "--gt", str(gt)]) == 0
    rows = {r["mask"][: -len(".png")]: r for r in csv.DictReader((again / "predictions.csv").open())}
    assert sorted(rows) == sorted(want)
    for k in want:
        assert float(rows[k]["pixel_accuracy"]) == pytest.approx(float((want[k] == expected[k]).mean()), abs=1e-4)
    # finetune reads them, with the class names from the files
    run = tmp_path / "run"
    assert _cli(["finetune", str(gt), "--images", str(photos), "-o", str(run), "--epochs", "1", "-b", "1", *TINY]) == 0
    assert load_checkpoint(run / "last.pt").classes == names
    shutil.rmtree(run)
