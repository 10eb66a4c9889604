"""Bad masks, COCO JSON and weights files: each is one clear line naming the file, the rest carries on.

evaluate runs once over a folder corpus of bad and odd masks and once over a COCO
results file with bad annotations; the figures over the good pairs must equal a
confusion matrix computed here by hand. Whole-file problems (malformed JSON, a COCO
ground truth missing keys, unusable weights) must end as exit status 2 with one line.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fcn_label.cli import run_cli
from fcn_label.checkpoint import save_checkpoint
from support.helpers import make_checkpoint, rand_image

N = 5
H, W = 12, 16


def cli(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return e.value.code, out.out, out.err


def save(path, a, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a.astype(np.uint8), mode=mode if mode != "P" else "L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 20 % 256)])
        im = Image.fromarray(a.astype(np.uint8), mode="P")
        im.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 20 % 256)])
    im.save(path)
    return path


def mean_iou(pairs):
    """Pooled confusion over all pairs, IoU per class present in either, by plain loops."""
    conf = np.zeros((N, N), np.int64)
    for g, p in pairs:
        keep = g < N
        for a, b in zip(g[keep].ravel(), p[keep].ravel()):
            conf[a, b] += 1
    ious = []
    for c in range(N):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c, :].sum() - conf[c, c]
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious)), int(conf.sum())


def test_mask_corpus(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt, pr = tmp_path / "gt", tmp_path / "pred"
    good = []

    def pair(name, gmode="L", pmode="L", g=None, p=None):
        g = rng.integers(0, N, (H, W)) if g is None else g
        p = rng.integers(0, N, (H, W)) if p is None else p
        save(gt / f"{name}.png", g, gmode)
        save(pr / f"{name}.png", p, pmode)
        return g, p

    # scored
    good.append(pair("l_vs_l"))
    good.append(pair("palette_pred_vs_l_gt", pmode="P"))
    good.append(pair("palette_gt_vs_l_pred", gmode="P"))
    g = rng.integers(0, N, (H, W))
    g[:3] = 255  # ignored
    g[3, :5] = 9  # out of range in the ground truth: left out, counted
    good.append(pair("gt_ignore_and_out_of_range", g=g))
    g, p = rng.integers(0, N, (H, W)), rng.integers(0, N, (H, W))
    save(gt / "la_pred.png", g)
    Image.fromarray(np.dstack([p, np.full((H, W), 200)]).astype(np.uint8), mode="LA").save(pr / "la_pred.png")
    good.append((g, p))
    g, p = rng.integers(0, N, (H, W)), rng.integers(0, N, (H, W))
    save(gt / "pred_16bit_small.png", g)
    Image.fromarray(p.astype(np.uint16)).save(pr / "pred_16bit_small.png")
    good.append((g, p))
    # reported, not scored
    bad = {}
    p = rng.integers(0, N, (H, W))
    p[5, 5] = 7
    pair("pred_out_of_range", p=p)
    bad["pred_out_of_range"] = ("error", "outside 0..4")
    pair("size_mismatch", p=rng.integers(0, N, (10, 12)))
    bad["size_mismatch"] = ("error", "12x10")
    save(gt / "missing_pred.png", rng.integers(0, N, (H, W)))
    bad["missing_pred"] = ("missing_prediction", "missing_pred.png")
    save(pr / "extra_pred.png", rng.integers(0, N, (H, W)))
    bad["extra_pred"] = ("extra_prediction", "extra_pred.png")
    for name, data, words in [("truncated_pred", None, "corrupt or truncated"), ("empty_pred", b"", "empty file"),
                              ("text_pred", b"not a png\n" * 9, "not a recognised image format")]:
        save(gt / f"{name}.png", rng.integers(0, N, (H, W)))
        if data is None:
            buf = save(pr / f"{name}.png", rng.integers(0, N, (H, W))).read_bytes()
            data = buf[: len(buf) // 2]
        (pr / f"{name}.png").write_bytes(data)
        bad[name] = ("error", words)
    save(gt / "rgb_pred.png", rng.integers(0, N, (H, W)))
    Image.fromarray(rand_image(H, W, 1)).save(pr / "rgb_pred.png")
    bad["rgb_pred"] = ("error", "mode 'RGB'")
    save(gt / "pred_16bit_big.png", rng.integers(0, N, (H, W)))
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(pr / "pred_16bit_big.png")
    bad["pred_16bit_big"] = ("error", "do not fit 8-bit")
    save(pr / "gt_truncated.png", rng.integers(0, N, (H, W)))
    buf = save(gt / "gt_truncated.png", rng.integers(0, N, (H, W))).read_bytes()
    (gt / "gt_truncated.png").write_bytes(buf[:60])
    bad["gt_truncated"] = ("error", "gt_truncated.png")

    code, _, err = cli(capsys, "evaluate", "--gt", gt, "--pred", pr, "-n", N, "--out", tmp_path / "r", "-q")
    assert code == 1  # some ground truth could not be scored
    f = pd.read_csv(tmp_path / "r" / "failures.csv", keep_default_na=False)
    kinds = {"evaluate": "error"}  # failures.csv's stage of evaluate's "error" kind
    by_key = {Path(p).stem: (kinds.get(stage, stage), msg) for p, stage, msg in zip(f["path"], f["stage"], f["reason"])}
    assert set(by_key) == set(bad)
    for key, (kind, words) in bad.items():
        assert by_key[key][0] == kind and words in by_key[key][1], (key, by_key[key])
        assert f"{key}.png" in by_key[key][1]
        lines = [ln for ln in err.splitlines() if f"{key}.png" in ln]
        assert len(lines) == 1 and words in lines[0], (key, lines)
    s = pd.read_csv(tmp_path / "r" / "summary.csv").set_index("metric")["value"]
    miou, pixels = mean_iou(good)
    assert s["images_evaluated"] == len(good)
    assert s["mean_iou"] == pytest.approx(miou, abs=1e-6)  # summary.csv holds 6 decimals
    assert s["pixels_gt_out_of_range"] == 5


def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_coco_results_corpus(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gts = {k: rng.integers(0, N, (H, W)) for k in range(8)}
    for k, g in gts.items():
        save(tmp_path / "gt" / f"im{k}.png", g)
    m = np.zeros((H, W), bool)
    m[2:6, 3:11] = True
    images = [{"id": k + 1, "file_name": f"im{k}.png", "height": H, "width": W} for k in range(8)]
    images.append({"id": 99, "width": W})  # lacks file_name
    anns = [
        {"image_id": 1, "category_id": 3, "segmentation": rle(m), "score": 0.9},  # good: class 2 in m
        {"image_id": 2, "category_id": 3, "segmentation": [[1, 1, 8, 1]], "score": 0.9},  # 2 points: no area
        {"image_id": 3, "category_id": 3, "segmentation": rle(np.ones((10, 10), bool)), "score": 0.9},  # wrong size
        {"image_id": 4, "category_id": 42, "segmentation": rle(m), "score": 0.9},  # unknown category
        {"image_id": 5, "category_id": 3, "segmentation": {"size": [H, W], "counts": "!!garbage"}, "score": 0.9},
        {"image_id": 6, "category_id": 3, "score": 0.9},  # no segmentation: paints nothing
        {"image_id": 7, "category_id": 3, "segmentation": [[0, 0, 15, 0, 15, 11, 0, 11]], "score": 0.9},  # polygon
    ]  # image 8: no annotation at all: all background
    cats = [{"id": i + 1, "name": f"c{i}"} for i in range(N)]
    (tmp_path / "pred.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    code, _, err = cli(capsys, "evaluate", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred.json", "-n", N,
                       "--out", tmp_path / "r", "-q")
    assert code == 1
    f = pd.read_csv(tmp_path / "r" / "failures.csv", keep_default_na=False)
    msgs = {Path(p.split("#")[-1]).stem: msg for p, msg in zip(f["path"], f["reason"])}  # pred.json#<file name>
    assert "RLE size [10, 10] != image [12, 16]" in msgs["im2"]
    assert "category_id 42 is not one of the 5 known categories" in msgs["im3"]
    assert "undecodable RLE" in msgs["im4"]
    assert "lacks 'id' or 'file_name'" in msgs["pred"]  # the file itself
    assert len(f) == 4 and all("pred.json" in m for m in msgs.values())
    for words in ("RLE size", "category_id 42", "undecodable RLE", "lacks 'id'"):
        assert sum(words in ln for ln in err.splitlines()) == 1
    # scored: im0 (class 2 in m), im1 and im5 (nothing painted), im6 (whole image class 2: the polygon
    # covers pixel centres 0..15 x 0..11 as pycocotools rasterises it), im7 (background)
    whole = mask_utils.decode(mask_utils.frPyObjects([[0, 0, 15, 0, 15, 11, 0, 11]], H, W)[0]).astype(bool)
    preds = {0: np.where(m, 2, 0), 1: np.zeros((H, W), int), 5: np.zeros((H, W), int), 6: np.where(whole, 2, 0),
             7: np.zeros((H, W), int)}
    per = pd.read_csv(tmp_path / "r" / "per_image.csv")
    assert sorted(per["key"]) == [f"im{k}" for k in sorted(preds)]
    s = pd.read_csv(tmp_path / "r" / "summary.csv").set_index("metric")["value"]
    assert s["mean_iou"] == pytest.approx(mean_iou([(gts[k], p) for k, p in preds.items()])[0], abs=1e-6)


@pytest.mark.parametrize("case,words", [
    ("malformed", "malformed JSON"),
    ("not_coco", "expected a COCO results list"),
])
def test_unusable_coco_results_file_is_one_line(tmp_path, capsys, case, words):
    save(tmp_path / "gt" / "a.png", np.zeros((H, W)))
    (tmp_path / "p.json").write_text({"malformed": '{"annotations": [', "not_coco": '{"foo": 1}'}[case])
    code, _, err = cli(capsys, "evaluate", "--gt", tmp_path / "gt", "--pred", tmp_path / "p.json", "-n", N)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and "p.json" in lines[0]


GT_JSON = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 8, 1, 8, 8]],
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}


def _break(kind):
    d = copy.deepcopy(GT_JSON)
    if kind == "no_file_name":
        del d["images"][0]["file_name"]
    elif kind == "no_height":
        del d["images"][0]["height"]
    elif kind == "no_image_id":
        del d["annotations"][0]["image_id"]
    elif kind == "no_category_name":
        del d["categories"][0]["name"]
    elif kind == "images_not_a_list":
        d["images"] = "oops"
    elif kind == "no_annotations":
        del d["annotations"]
    return d


@pytest.mark.parametrize("kind,words", [
    ("no_file_name", "an entry lacks 'file_name'"), ("no_height", "an entry lacks 'height'"),
    ("no_image_id", "an entry lacks 'image_id'"), ("no_category_name", "an entry lacks 'name'"),
    ("images_not_a_list", "unexpected structure"), ("no_annotations", "lacks the 'annotations' list"),
])
def test_coco_ground_truth_missing_keys_is_one_line(tmp_path, capsys, kind, words):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rand_image(H, W, 0)).save(tmp_path / "imgs" / "a.jpg")
    save(tmp_path / "pred" / "a.png", np.zeros((H, W)))
    (tmp_path / "gt.json").write_text(json.dumps(_break(kind)))
    code, _, err = cli(capsys, "evaluate", "--gt", tmp_path / "gt.json", "--images", tmp_path / "imgs",
                       "--pred", tmp_path / "pred")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and "gt.json" in lines[0], err


def test_coco_ground_truth_annotation_without_category_is_reported(tmp_path, capsys):
    d = copy.deepcopy(GT_JSON)
    d["images"].append({"id": 2, "file_name": "b.jpg", "height": H, "width": W})
    del d["annotations"][0]["category_id"]
    (tmp_path / "imgs").mkdir()
    for n in "ab":
        Image.fromarray(rand_image(H, W, 0)).save(tmp_path / "imgs" / f"{n}.jpg")
        save(tmp_path / "pred" / f"{n}.png", np.zeros((H, W)))
    (tmp_path / "gt.json").write_text(json.dumps(d))
    code, _, err = cli(capsys, "evaluate", "--gt", tmp_path / "gt.json", "--images", tmp_path / "imgs",
                       "--pred", tmp_path / "pred", "-q")
    assert code == 1 and "gt.json: annotation 1 has no 'category_id'" in err
    assert "1 images scored" in err  # b was still scored


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("case,words", [
    ("jpeg", "not a PyTorch weights file"), ("empty", "not a PyTorch weights file"),
    ("truncated", "not a PyTorch weights file or truncated"), ("directory", "is a directory"),
    ("class_count", "has 5 classes but 7 were asked for"),
    ("pickle_code", f"refused: the file contains pickled code or objects ({os.system.__module__}.system)"),
    ("pickle_code_protocol2", "refused: the file contains pickled code or objects"),
    ("wrong_shapes", "weights do not fit"), ("missing", "no such weights file"),
])
def test_bad_weights_are_one_line_and_run_no_code(tmp_path, capsys, monkeypatch, case, words):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(rand_image(16, 16, 0)).save(tmp_path / "img.png")
    good = tmp_path / "good.pt"
    save_checkpoint(make_checkpoint(), good)
    w = tmp_path / "w.pt"
    extra = []
    if case == "jpeg":
        Image.fromarray(rand_image(16, 16, 0)).save(w, format="JPEG")
    elif case == "empty":
        w.write_bytes(b"")
    elif case == "truncated":
        w.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "directory":
        w.mkdir()
    elif case == "class_count":
        w, extra = good, ["--num-classes", "7"]
    elif case == "pickle_code":
        torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _RunsCode()}, w, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    elif case == "pickle_code_protocol2":
        torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _RunsCode()}, w)
    elif case == "wrong_shapes":
        d = torch.load(good, weights_only=True)
        d["config"]["width"] = 0.125
        torch.save(d, w)
    code, _, err = cli(capsys, "predict", tmp_path / "img.png", "--out", tmp_path / "out", "-w", w, *extra, "-q")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert str(w.name) in lines[0]
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists()  # nothing written before the model is known to be good
