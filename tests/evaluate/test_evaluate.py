"""`fcn-label evaluate` against independent references.

References: a direct NumPy transcription of the FCN paper's formulas (pixel
counts by explicit class-pair comparison, written here, not the library's
bincount), torchmetrics, pycocotools' encoder/decoder, and a worked example
whose numbers are computed by hand in the comments.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction as Fr
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fcn_label import evaluate as ev
from fcn_label.cli import run_cli

# pycocotools' decoder trips NumPy 2's copy-keyword deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ---------------------------------------------------------------------------
# the reference: the paper's definitions, written out


def ref_counts(gts, preds, n):
    """n_ij by comparing every class pair; pixels whose GT is not in 0..n-1 (ignore included) never match."""
    nij = np.zeros((n, n), dtype=np.int64)
    for g, p in zip(gts, preds):
        for i in range(n):
            gi = g == i
            for j in range(n):
                nij[i, j] += int(np.count_nonzero(gi & (p == j)))
    return nij


def ref_metrics(nij):
    n = nij.shape[0]
    t = nij.sum(1)  # t_i = sum_j n_ij
    col = nij.sum(0)  # sum_j n_ji
    iu = {}
    for i in range(n):
        union = t[i] + col[i] - nij[i, i]
        if union > 0:  # a class absent from both has no IU and is left out of the means
            iu[i] = nij[i, i] / union
    acc = {i: nij[i, i] / t[i] for i in range(n) if t[i] > 0}
    return {
        "pixel_accuracy": np.trace(nij) / t.sum(),
        "mean_accuracy": sum(acc.values()) / len(acc),
        "mean_iou": sum(iu.values()) / len(iu),
        "fw_iou": sum(t[i] * iu[i] for i in iu) / t.sum(),
        "iou": [iu.get(i, math.nan) for i in range(n)],
        "accuracy": [acc.get(i, math.nan) for i in range(n)],
    }


def blobs(rng, h, w, n, k=6):
    """A mask of k random rectangles over a random background: realistic runs for PNG/RLE."""
    m = np.full((h, w), rng.integers(0, n), dtype=np.uint8)
    for _ in range(k):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y : y + rng.integers(2, h // 2 + 3), x : x + rng.integers(2, w // 2 + 3)] = rng.integers(0, n)
    return m


def save(path: Path, a: np.ndarray, mode: str = "L") -> Path:
    """An index PNG: greyscale ('L') or palette ('P', an arbitrary palette: values are what count)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.frombytes("P", (a.shape[1], a.shape[0]), np.ascontiguousarray(a).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        im = Image.fromarray(np.ascontiguousarray(a))
    im.save(path)
    return path


def random_set(tmp: Path, n=5, count=6, seed=0, ignore=255, absent=None, oor=None):
    """GT/pred folders of random masks with ignore pixels; returns the arrays too."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for k in range(count):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 50))
        g = blobs(rng, h, w, n)
        p = np.where(rng.random((h, w)) < 0.7, g, blobs(rng, h, w, n))
        g[rng.random((h, w)) < 0.1] = ignore
        if oor is not None:
            g[rng.random((h, w)) < 0.03] = oor
        if absent is not None:
            g[g == absent] = 0
            p[p == absent] = 0
        save(tmp / "gt" / f"img{k}.png", g, "P" if k % 2 else "L")
        save(tmp / "pred" / f"img{k}.png", p, "L" if k % 2 else "P")
        gts.append(g)
        preds.append(p)
    return gts, preds


def run(argv, capsys):
    """The real entry point in-process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    cap = capsys.readouterr()
    code = e.value.code if isinstance(e.value.code, int) else (0 if e.value.code is None else 1)
    return code, cap.out, cap.err


def lib_eval(gt, pred, n, ignore=255, names=None, **kw):
    truth = ev.GroundTruth(gt, ignore_index=ignore)
    return ev.evaluate(truth, ev.open_predictions(pred, truth, n, names), n, names, ignore, **kw)


# ---------------------------------------------------------------------------
# metrics against the references


def test_random_masks_match_paper_formulas(tmp_path):
    n = 6
    gts, preds = random_set(tmp_path, n=n, count=7, seed=1, absent=4, oor=9)
    res = lib_eval(tmp_path / "gt", tmp_path / "pred", n)
    nij = ref_counts(gts, preds, n)
    ref = ref_metrics(nij)
    np.testing.assert_array_equal(res.conf, nij)
    for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert getattr(res.scores, k) == pytest.approx(ref[k], rel=1e-12), k
    np.testing.assert_allclose(res.scores.iou, ref["iou"], rtol=1e-12)
    np.testing.assert_allclose(res.scores.accuracy, ref["accuracy"], rtol=1e-12)
    assert res.absent_classes == ["class_4"]
    assert res.pixels_ignored == sum(int((g == 255).sum()) for g in gts)
    assert res.pixels_gt_out_of_range == sum(int((g == 9).sum()) for g in gts)
    # per-image rows: the same formulas on each image alone
    per = res.per_image.set_index("key")
    for k, (g, p) in enumerate(zip(gts, preds)):
        r = ref_metrics(ref_counts([g], [p], n))
        assert per.loc[f"img{k}", "pixel_accuracy"] == pytest.approx(r["pixel_accuracy"], rel=1e-12)
        assert per.loc[f"img{k}", "mean_iou"] == pytest.approx(r["mean_iou"], rel=1e-12)
        np.testing.assert_allclose(per.loc[f"img{k}", [f"iou_class_{i}" for i in range(n)]].to_numpy(float),
                                   r["iou"], rtol=1e-12)
    # pooled, not averaged: with images of different content the two differ
    assert res.scores.mean_iou != pytest.approx(per["mean_iou"].mean(), abs=1e-6)


def test_agrees_with_torchmetrics(tmp_path):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    n = 5
    gts, preds = random_set(tmp_path, n=n, count=6, seed=2)
    gts[0][:2, :2] = np.arange(n)[:4].reshape(2, 2)  # every class in the ground truth: definitions agree
    save(tmp_path / "gt" / "img0.png", gts[0])
    res = lib_eval(tmp_path / "gt", tmp_path / "pred", n)
    jac_macro = tm.MulticlassJaccardIndex(num_classes=n, average="macro", ignore_index=255)
    jac_none = tm.MulticlassJaccardIndex(num_classes=n, average="none", ignore_index=255)
    acc_micro = tm.MulticlassAccuracy(num_classes=n, average="micro", ignore_index=255)
    acc_macro = tm.MulticlassAccuracy(num_classes=n, average="macro", ignore_index=255)
    for g, p in zip(gts, preds):  # images differ in size: update one at a time
        pt, gt_ = torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64))
        for m in (jac_macro, jac_none, acc_micro, acc_macro):
            m.update(pt, gt_)
    assert res.scores.mean_iou == pytest.approx(jac_macro.compute().item(), abs=1e-6)
    np.testing.assert_allclose(res.scores.iou, jac_none.compute().numpy(), atol=1e-6)
    assert res.scores.pixel_accuracy == pytest.approx(acc_micro.compute().item(), abs=1e-6)
    assert res.scores.mean_accuracy == pytest.approx(acc_macro.compute().item(), abs=1e-6)


def test_torchmetrics_also_drops_a_class_absent_from_both(tmp_path):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    n = 5
    gts, preds = random_set(tmp_path, n=n, count=4, seed=3, absent=2)
    res = lib_eval(tmp_path / "gt", tmp_path / "pred", n)
    m = tm.MulticlassJaccardIndex(num_classes=n, average="macro", ignore_index=255)
    for g, p in zip(gts, preds):
        m.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)))
    assert math.isnan(res.scores.iou[2])
    assert res.scores.mean_iou == pytest.approx(m.compute().item(), abs=1e-6)


def test_worked_example_by_hand(tmp_path, capsys):
    # 4 classes, ignore 255; class 3 occurs nowhere; value 7 is outside 0..3.
    # image a: GT  0 0 1 1     pred 0 1 1 1
    #              0 X 2 2          0 0 2 1     (X = 255, ignored)
    # image b: GT  1 1 1 7     pred 1 2 1 0     (7 excluded)
    # n_ij (rows GT):  [2 1 0] [0 4 1] [0 1 1]  (class 3 all zero)
    # t = 3 5 2, total 10; column sums 2 6 2; diagonal 2 4 1
    # pixel acc 7/10; mean acc (2/3 + 4/5 + 1/2)/3 = 59/90
    # IU 2/3, 4/7, 1/3 -> mean IU 11/21; f.w. IU (3*2/3 + 5*4/7 + 2*1/3)/10 = 58/105
    # per image: a has pixel acc 5/7 and IU 2/3, 1/2, 1/2 -> 5/9; b has pixel acc 2/3, IU1 2/3, IU2 0 -> 1/3
    a_gt = np.array([[0, 0, 1, 1], [0, 255, 2, 2]], np.uint8)
    a_pr = np.array([[0, 1, 1, 1], [0, 0, 2, 1]], np.uint8)
    b_gt = np.array([[1, 1, 1, 7]], np.uint8)
    b_pr = np.array([[1, 2, 1, 0]], np.uint8)
    for name, g, p in (("a", a_gt, a_pr), ("b", b_gt, b_pr)):
        save(tmp_path / "gt" / f"{name}.png", g, "P")
        save(tmp_path / "pred" / f"{name}.png", p)
    (tmp_path / "names.txt").write_text("bg\nroad\ncar\nboat\n")
    code, out, err = run(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                          "--classes", str(tmp_path / "names.txt"), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("metric")["value"]
    assert s["pixel_accuracy"] == pytest.approx(float(Fr(7, 10)), abs=1e-6)
    assert s["mean_accuracy"] == pytest.approx(float(Fr(59, 90)), abs=1e-6)
    assert s["mean_iou"] == pytest.approx(float(Fr(11, 21)), abs=1e-6)
    assert s["fw_iou"] == pytest.approx(float(Fr(58, 105)), abs=1e-6)
    assert s["pixels_evaluated"] == 10 and s["pixels_ignored"] == 1 and s["pixels_gt_out_of_range"] == 1
    assert s["classes_absent"] == 1
    pc = pd.read_csv(tmp_path / "rep" / "per_class.csv").set_index("class")
    assert list(pc["gt_pixels"]) == [3, 5, 2, 0] and list(pc["predicted_pixels"]) == [2, 6, 2, 0]
    assert list(pc["true_positive_pixels"]) == [2, 4, 1, 0]
    assert list(pc["gt_images"]) == [1, 2, 1, 0]  # bg and car only in a, road in both
    np.testing.assert_allclose(pc["iou"].iloc[:3], [2 / 3, 4 / 7, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(pc["precision"].iloc[:3], [2 / 2, 4 / 6, 1 / 2], atol=1e-6)
    assert math.isnan(pc.loc["boat", "iou"]) and bool(pc.loc["boat", "absent"])
    cm = pd.read_csv(tmp_path / "rep" / "confusion_matrix.csv", index_col=0)
    assert cm.to_numpy().tolist() == [[2, 1, 0, 0], [0, 4, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    pi = pd.read_csv(tmp_path / "rep" / "per_image.csv").set_index("key")
    assert pi.loc["a", "pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-6)
    assert pi.loc["a", "mean_iou"] == pytest.approx(5 / 9, abs=1e-6)
    assert pi.loc["b", "mean_iou"] == pytest.approx(1 / 3, abs=1e-6)
    assert math.isnan(pi.loc["b", "iou_bg"])  # class 0 absent from image b alone
    assert "boat" in out and "absent" in out  # the terminal names the absent class
    # JSON for machines: the same figures, NaN as null
    code, out, _ = run(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                        "--classes", str(tmp_path / "names.txt"), "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["summary"]["mean_iou"] == pytest.approx(11 / 21, abs=1e-9)
    assert d["absent_classes"] == ["boat"] and d["per_class"][3]["iou"] is None


# ---------------------------------------------------------------------------
# COCO JSON predictions


def _rle(mask):
    from pycocotools import mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def test_coco_json_and_png_predictions_give_identical_reports(tmp_path):
    from fcn_label.predfolder.outputs import coco_annotations

    n = 5
    gts, preds = random_set(tmp_path, n=n, count=5, seed=4)
    # predict's own writer, assembled as predict assembles predictions.json (id = class index + 1)
    images, anns = [], []
    for k, p in enumerate(preds):
        images.append({"id": k + 10, "file_name": f"img{k}.png", "width": p.shape[1], "height": p.shape[0]})
        for a in coco_annotations(p, np.full(p.shape, 0.9, np.float32), n):
            anns.append({"id": len(anns) + 1, "image_id": k + 10, **a})
    cats = [{"id": i + 1, "name": f"class_{i}"} for i in range(n)]
    (tmp_path / "pred.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    # another tool's bare results list: file names as image ids, no categories (id = index + 1), no class 0 entries
    bare = []
    for k, p in enumerate(preds):
        for c in range(1, n):
            if (p == c).any():
                bare.append({"image_id": f"img{k}.jpg", "category_id": c + 1, "segmentation": _rle(p == c), "score": 0.5})
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    a = lib_eval(tmp_path / "gt", tmp_path / "pred", n)
    b = lib_eval(tmp_path / "gt", tmp_path / "pred.json", n)
    c = lib_eval(tmp_path / "gt", tmp_path / "bare.json", n)
    ref = ref_metrics(ref_counts(gts, preds, n))
    assert a.scores.mean_iou == pytest.approx(ref["mean_iou"], rel=1e-12)
    for other in (b, c):
        assert not other.failures
        np.testing.assert_array_equal(a.conf, other.conf)
        pd.testing.assert_frame_equal(a.summary_frame(), other.summary_frame())
        pd.testing.assert_frame_equal(a.per_class_frame(), other.per_class_frame())
        pd.testing.assert_frame_equal(a.per_image.drop(columns="pred"), other.per_image.drop(columns="pred"))


def test_coco_ground_truth_with_results_list_polygons_and_crowd(tmp_path, fixtures_dir):
    """Real COCO instances as ground truth; its own annotations, as a results list, score 100%."""
    from pycocotools.coco import COCO

    src = fixtures_dir / "coco" / "annotations.json"
    data = json.loads(src.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in data["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    truth = ev.GroundTruth(src)
    spec = ev.resolve_classes(gt=truth)
    n, names = spec.num, spec.names
    assert n == 81 and names[0] == "background" and names[1] == "person"
    res = ev.evaluate(truth, ev.open_predictions(tmp_path / "results.json", truth, n, names), n, names, 255)
    assert not res.failures and res.n_evaluated == 6
    assert res.scores.pixel_accuracy == 1.0 and res.scores.mean_iou == 1.0
    # the ignored pixels are exactly the crowd region (pycocotools' own decoder) not painted over later
    coco = COCO(str(src))
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1
    m = coco.annToMask(crowd[0]).astype(bool)
    later = [a for a in coco.imgToAnns[crowd[0]["image_id"]] if data["annotations"].index(a) > data["annotations"].index(crowd[0])]
    for a in later:
        m &= ~coco.annToMask(a).astype(bool)
    assert res.pixels_ignored == int(m.sum()) > 0
    # image 89 has no annotations: all background, and still scored
    assert res.per_image.set_index("key").loc["000000000089", "pixel_accuracy"] == 1.0


def test_coco_polygon_prediction_decoded_like_pycocotools(tmp_path):
    from pycocotools import mask as mu

    gt = np.zeros((30, 40), np.uint8)
    gt[5:20, 8:30] = 2
    save(tmp_path / "gt" / "x.png", gt)
    poly = [8.0, 5.0, 30.0, 5.0, 30.0, 20.0, 8.0, 20.0]
    preds = {"images": [{"id": 1, "file_name": "sub/x.jpg", "width": 40, "height": 30}],
             "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],  # background implicit: 7 -> 1, 9 -> 2
             "annotations": [{"image_id": 1, "category_id": 9, "segmentation": [poly], "score": 0.8}]}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    res = lib_eval(tmp_path / "gt", tmp_path / "p.json", 3)
    ref_pred = mu.decode(mu.merge(mu.frPyObjects([poly], 30, 40))).astype(np.uint8) * 2
    np.testing.assert_array_equal(res.conf, ref_counts([gt], [ref_pred], 3))
    assert res.per_image["key"].tolist() == ["x"]  # "sub/x" matched to "x" by its trailing name


def test_overlapping_results_higher_score_wins(tmp_path):
    gt = np.zeros((6, 9), np.uint8)
    gt[:, 3:] = 2
    save(tmp_path / "gt" / "x.png", gt)
    left, right = np.zeros((6, 9), bool), np.zeros((6, 9), bool)
    left[:, :6], right[:, 3:] = True, True
    results = [{"image_id": "x", "category_id": 3, "segmentation": _rle(right), "score": 0.9},  # class 2
               {"image_id": "x", "category_id": 2, "segmentation": _rle(left), "score": 0.4}]  # class 1, listed last
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = lib_eval(tmp_path / "gt", tmp_path / "r.json", 3)
    expected = np.ones((6, 9), np.uint8)
    expected[:, 3:] = 2  # the overlap (columns 3..5) goes to the higher score
    np.testing.assert_array_equal(res.conf, ref_counts([gt], [expected], 3))


# ---------------------------------------------------------------------------
# matching, bad input, outputs


def test_match_keys():
    m, missing, extra = ev.match_keys(["val/a", "val/b", "c", "x/d", "y/d"], ["a", "val/b", "c", "e", "d"])
    assert m == {"val/b": "val/b", "c": "c", "val/a": "a"}
    assert sorted(missing) == ["x/d", "y/d"]
    assert [k for k, _ in extra] == ["e", "d"] and "several" in extra[1][1]


def test_bad_inputs_are_reported_and_the_rest_is_scored(tmp_path, capsys):
    n = 4
    gts, preds = random_set(tmp_path, n=n, count=4, seed=5)
    gt, pr = tmp_path / "gt", tmp_path / "pred"
    bad_class = preds[1].copy()
    bad_class[gts[1] != 255] = 9  # >= n where it counts
    save(pr / "img1.png", bad_class)
    (pr / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt
    save(pr / "img3.png", np.zeros((5, 5), np.uint8))  # wrong size
    save(pr / "stray.png", np.zeros((5, 5), np.uint8))  # extra
    save(gt / "lonely.png", np.zeros((5, 5), np.uint8))  # missing prediction
    Image.new("RGB", (8, 8)).save(gt / "rgb.png")  # colour mask: refused
    save(pr / "rgb.png", np.zeros((8, 8), np.uint8))
    code, out, err = run(["evaluate", "--gt", str(gt), "--pred", str(pr), "-n", str(n), "--out", str(tmp_path / "r")],
                         capsys)
    assert code == 1
    assert "Traceback" not in err
    f = pd.read_csv(tmp_path / "r" / "failures.csv")
    assert list(f.columns) == ["path", "stage", "reason"]  # the schema of every verb's failures.csv
    by_key = {Path(p).stem: (stage, msg) for p, stage, msg in zip(f["path"], f["stage"], f["reason"])}
    assert by_key["img1"][0] == "evaluate" and "outside 0..3" in by_key["img1"][1]
    assert by_key["img2"][0] == "evaluate" and "img2.png" in by_key["img2"][1]
    assert by_key["img3"][0] == "evaluate" and "5x5" in by_key["img3"][1]
    assert by_key["rgb"][0] == "evaluate" and "mode 'RGB'" in by_key["rgb"][1]
    assert by_key["lonely"][0] == "missing_prediction" and by_key["stray"][0] == "extra_prediction"
    # the one good pair is scored exactly
    s = pd.read_csv(tmp_path / "r" / "summary.csv").set_index("metric")["value"]
    assert s["images_evaluated"] == 1
    assert s["mean_iou"] == pytest.approx(ref_metrics(ref_counts(gts[:1], preds[:1], n))["mean_iou"], abs=1e-6)
    for msg in ("img1.png", "img2.png", "lonely.png", "stray.png"):
        assert msg in err


def test_invalid_prediction_only_where_ground_truth_is_ignored_is_fine(tmp_path):
    g = np.array([[0, 1, 11, 11]], np.uint8)
    save(tmp_path / "gt" / "a.png", g)
    save(tmp_path / "pred" / "a.png", g)  # ground truth against itself: its 11s sit on ignored pixels
    res = lib_eval(tmp_path / "gt", tmp_path / "pred", 11, ignore=11)
    assert not res.failures and res.scores.mean_iou == 1.0 and res.pixels_ignored == 2


def test_classes_txt_beside_a_list_file_names_classes_and_colours(tmp_path, capsys):
    rng = np.random.default_rng(8)
    lines = []
    for k in range(2):
        g = blobs(rng, 12, 16, 3)
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.jpg")
        save(tmp_path / "lab" / f"im{k}.png", g)
        save(tmp_path / "pred" / f"im{k}.png", g)
        lines.append(f"im{k}.jpg lab/im{k}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("road 128 64 128\ncar 64 0 128\nsky 128 128 128\n")
    truth = ev.GroundTruth(tmp_path / "list.txt")
    spec = ev.resolve_classes(gt=truth)
    assert spec.names == ["road", "car", "sky"] and spec.palette[1] == (64, 0, 128)
    code, out, err = run(["evaluate", "--gt", str(tmp_path / "list.txt"), "--pred", str(tmp_path / "pred"),
                          "--format", "json", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert [c["class"] for c in json.loads(out)["per_class"]] == ["road", "car", "sky"]
    with Image.open(tmp_path / "r" / "worst_images.png") as im:  # the image column came from the list file
        assert im.size[0] > 3 * 200
    code, _, err = run(["evaluate", "--gt", str(tmp_path / "list.txt"), "--pred", str(tmp_path / "pred"),
                        "--classes", str(tmp_path / "classes.txt"), "-n", "4"], capsys)
    assert code == 2 and "lists 3 names" in err
    code, _, err = run(["evaluate", "--gt", str(tmp_path / "list.txt")], capsys)
    assert code == 2 and "--pred" in err and "--weights" in err


@pytest.mark.parametrize("case", ["empty_folder", "malformed_json", "no_classes", "bare_list_without_coco_gt"])
def test_unusable_arguments_are_one_line_errors(tmp_path, capsys, case):
    save(tmp_path / "gt" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"annotations": [')
    (tmp_path / "bare.json").write_text(json.dumps([{"image_id": 3, "category_id": 1, "segmentation": [], "score": 1}]))
    pred, extra = {"empty_folder": ("empty", ["-n", "3"]), "malformed_json": ("bad.json", ["-n", "3"]),
                   "no_classes": ("gt", []), "bare_list_without_coco_gt": ("bare.json", ["-n", "3"])}[case]
    code, out, err = run(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / pred),
                          "--out", str(tmp_path / "r"), *extra], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert {"empty_folder": "no mask files", "malformed_json": "malformed JSON", "no_classes": "--num-classes",
            "bare_list_without_coco_gt": "image ids"}[case] in err


def test_writes_only_inside_out_and_pictures_are_sane(tmp_path, capsys):
    n = 5
    gts, preds = random_set(tmp_path, n=n, count=6, seed=6)
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = run(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "-n", str(n),
                        "--out", str(tmp_path / "rep"), "--worst", "3", "-q"], capsys)
    assert code == 0, err
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(tmp_path / "rep" in p.parents or p == tmp_path / "rep" for p in new)
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "summary.csv", "per_class.csv", "per_image.csv", "confusion_matrix.csv", "failures.csv",
        "confusion_matrix.png", "worst_images.png"}
    with Image.open(tmp_path / "rep" / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.width > 5 * 6
    # the three worst images by the reference's per-image mean IoU, in order
    per = sorted((ref_metrics(ref_counts([g], [p], n))["mean_iou"], k) for k, (g, p) in enumerate(zip(gts, preds)))
    truth = ev.GroundTruth(tmp_path / "gt")
    res = ev.evaluate(truth, ev.PngPredictions(tmp_path / "pred"), n, worst_k=3)
    assert [w.key for w in res.worst] == [f"img{k}" for _, k in per[:3]]
    with Image.open(tmp_path / "rep" / "worst_images.png") as im:
        assert im.height > 3 * 180


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Masks are scored and dropped: 5x the images must not mean 5x the peak (each pair here is 154 KB)."""
    import tracemalloc

    rng = np.random.default_rng(9)
    for k in range(150):
        g = blobs(rng, 240, 320, 6)
        for sub in ("small", "big") if k < 30 else ("big",):
            save(tmp_path / sub / "gt" / f"{k:03d}.png", g)
            save(tmp_path / sub / "pred" / f"{k:03d}.png", np.roll(g, 3, axis=1))
    peaks = []
    for sub in ("small", "big"):
        truth, pred = ev.GroundTruth(tmp_path / sub / "gt"), ev.PngPredictions(tmp_path / sub / "pred")
        tracemalloc.start()
        res = ev.evaluate(truth, pred, 6, workers=2, worst_k=2)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res.n_evaluated == (30 if sub == "small" else 150)
    assert peaks[1] < peaks[0] + 2_000_000, peaks  # holding the masks would add 120 x 154 KB = 18 MB


# ---------------------------------------------------------------------------
# real data (skipped without ../shared)


def shifted(g: np.ndarray, ignore: int, dx: int = 8) -> np.ndarray:
    """The mask moved dx pixels right; where that brings in ignore pixels the original label stays."""
    p = np.roll(g, dx, axis=1)
    p[:, :dx] = g[:, :dx]
    return np.where(p == ignore, g, p)


def test_camvid_against_itself_and_a_shifted_copy(tmp_path, camvid, capsys):
    lines = (camvid / "val.txt").read_text().split("\n")[:6]
    (tmp_path / "val.txt").write_text("\n".join(" ".join(str(camvid / p) for p in ln.split()) for ln in lines))
    gts = [np.array(Image.open(camvid / ln.split()[1])) for ln in lines]
    for ln, g in zip(lines, gts):
        save(tmp_path / "shifted" / Path(ln.split()[1]).name, shifted(g, 11))
    base = ["evaluate", "--gt", str(tmp_path / "val.txt"), "--classes", str(camvid / "classes.txt"),
            "--ignore-index", "11", "--format", "json"]
    code, out, err = run(base + ["--pred", str(camvid / "valannot")], capsys)
    d = json.loads(out)
    assert code == 0, err  # the 95 predictions without ground truth in this 6-line list are listed, not fatal
    assert d["summary"]["images_evaluated"] == 6 and d["summary"]["extra_predictions"] == 95
    assert d["summary"]["missing_predictions"] == 0
    assert d["summary"]["mean_iou"] == 1.0 and d["summary"]["pixel_accuracy"] == 1.0
    code, out, err = run(base + ["--pred", str(tmp_path / "shifted")], capsys)
    assert code == 0, err
    d = json.loads(out)
    ref = ref_metrics(ref_counts(gts, [shifted(g, 11) for g in gts], 11))
    for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert d["summary"][k] == pytest.approx(ref[k], rel=1e-9)
    assert 0.5 < d["summary"]["mean_iou"] < 0.99


def test_voc_fixture_palette_masks(tmp_path, fixtures_dir, capsys):
    voc = fixtures_dir / "voc"
    code, out, err = run(["evaluate", "--gt", str(voc), "--split", "train", "--pred", str(voc / "SegmentationClass"),
                          "-n", "21", "--format", "json", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["summary"]["images_evaluated"] == 5 and d["summary"]["pixel_accuracy"] == 1.0
    assert d["summary"]["pixels_ignored"] > 0
    # VOC names by default; classes in none of the 5 masks are listed as absent
    assert "sheep" in d["absent_classes"] and "aeroplane" not in d["absent_classes"]
    assert (tmp_path / "r" / "worst_images.png").is_file()


# ---------------------------------------------------------------------------
# --weights: predict and evaluate in one go


def _model_and_data(tmp_path, n=5, count=3):
    """A tiny random checkpoint, images, ground truth, and the plain reference predictions."""
    from support.helpers import make_checkpoint, one_at_a_time, rand_image

    from fcn_label.checkpoint import save_checkpoint

    ck = make_checkpoint(n=n)
    save_checkpoint(ck, tmp_path / "m.pt")
    rng = np.random.default_rng(7)
    gts, preds = [], []
    (tmp_path / "imgs").mkdir()
    for k in range(count):
        img = rand_image(40, 56, k)
        Image.fromarray(img).save(tmp_path / "imgs" / f"{k}.png")
        g = blobs(rng, 40, 56, n)
        g[:3] = 255
        save(tmp_path / "gt" / f"{k}.png", g)
        gts.append(g)
        preds.append(one_at_a_time(ck, img))
    assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) > 1  # a model that says something
    return gts, preds


def test_weights_mode_equals_the_reference_predictions(tmp_path, capsys):
    n = 5
    gts, preds = _model_and_data(tmp_path, n)
    code, out, err = run(["evaluate", "--weights", str(tmp_path / "m.pt"), "--images", str(tmp_path / "imgs"),
                          "--gt", str(tmp_path / "gt"), "--device", "cpu", "--format", "json", "-j", "2"], capsys)
    assert code == 0, err
    d = json.loads(out)
    ref = ref_metrics(ref_counts(gts, preds, n))
    for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert d["summary"][k] == pytest.approx(ref[k], rel=1e-9)
    assert [c["class"] for c in d["per_class"]] == [f"class{i}" for i in range(n)]  # names from the checkpoint


def test_predict_output_folder_and_its_json_give_identical_reports(tmp_path, capsys):
    """What `fcn-label predict` writes (masks + confidence/ + overlays/ PNGs + predictions.json) reads back right."""
    n = 5
    gts, preds = _model_and_data(tmp_path, n)
    code, _, err = run(["predict", str(tmp_path / "imgs"), "--out", str(tmp_path / "p"), "-w", str(tmp_path / "m.pt"),
                        "--parallel", "workers=0", "--device", "cpu", "--probs", "--overlay", "-q"], capsys)
    assert code == 0, err
    assert list((tmp_path / "p" / "confidence").glob("*.png"))  # PNGs that must not be read as predictions
    reports = []
    for pred in ("p", "p/predictions.json"):
        code, out, err = run(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / pred), "-n", str(n),
                              "--format", "json", "--out", str(tmp_path / f"r{len(reports)}")], capsys)
        assert code == 0, err
        reports.append(json.loads(out))
    assert reports[0]["failures"] == [] and reports[0]["summary"] == reports[1]["summary"]
    assert reports[0]["per_class"] == reports[1]["per_class"]
    ref = ref_metrics(ref_counts(gts, preds, n))
    assert reports[0]["summary"]["mean_iou"] == pytest.approx(ref["mean_iou"], rel=1e-9)
    a, b = (pd.read_csv(tmp_path / f"r{i}" / "per_image.csv").drop(columns="pred") for i in (0, 1))
    pd.testing.assert_frame_equal(a, b)


def test_entry_point_subprocess_no_traceback(tmp_path):
    """The installed console script: a malformed prediction JSON is one line and exit status 2."""
    save(tmp_path / "gt" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "p.json").write_text("[{]")
    exe = Path(sys.executable).parent / "fcn-label"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fcn_label.cli"]
    r = subprocess.run(cmd + ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "p.json"), "-n", "2"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "malformed JSON" in r.stderr and "p.json" in r.stderr
