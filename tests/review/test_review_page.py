"""fcn-label review: the page generator, its files, and the page itself in headless Chromium.

Orders are recomputed here from predictions.csv with pandas, and class membership from
the mask PNGs with NumPy, never from the review module's own data.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fcn_label.review import build_review
from fcn_label.review.page import write_page

from support.review_folder import run_predict
from support.helpers import rand_image, voc_colour


def expected(pred: Path, key: str) -> list[str]:
    """Data-path order for ``key`` straight from predictions.csv (ties by path)."""
    df = pd.read_csv(pred / "predictions.csv")
    df["dp"] = [m[:-4] + os.path.splitext(p)[1].lower() for m, p in zip(df["mask"], df["path"])]
    if key == "confidence":
        df = df.sort_values(["mean_confidence", "dp"], ascending=[True, True])
    elif key == "low":
        df = df.sort_values(["low_confidence_fraction", "dp"], ascending=[False, True])
        # pandas sorts each key separately: equal fractions are then by path ascending
    elif key == "iou":
        df = df.sort_values(["mean_iou", "dp"], ascending=[True, True], na_position="last")
    return list(df["dp"])


def masks_with_class(pred: Path) -> dict[str, set[str]]:
    """Class name -> data-paths whose mask PNG holds that class index (category id - 1)."""
    cats = json.loads((pred / "predictions.json").read_text())["categories"]
    df = pd.read_csv(pred / "predictions.csv")
    out = {c["name"]: set() for c in cats}
    for m, p in zip(df["mask"], df["path"]):
        a = np.array(Image.open(pred / m))
        for c in cats:
            if (a == c["id"] - 1).any():
                out[c["name"]].add(m[:-4] + os.path.splitext(p)[1].lower())
    return out


def tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def test_page_files_rerun_and_nothing_outside_out(pred_folder, tmp_path):
    before = tree(pred_folder.parent)
    out = tmp_path / "review"
    res = build_review(pred_folder, out)
    n = len(pd.read_csv(pred_folder / "predictions.csv"))
    assert res.images == n == 10 and not res.problems
    assert res.thumbs_written == 3 * n  # photo, overlay, confidence map for each image
    thumbs = sorted(p.relative_to(out).as_posix() for p in (out / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 3 * n and all(p.startswith(("thumbs/a/", "thumbs/b/")) for p in thumbs)
    assert tree(pred_folder.parent) == before  # the predict folder and photos are untouched
    assert not list(out.rglob("*.tmp"))
    # thumbnails have the photo's aspect ratio and at most --thumb-size pixels
    for p in (out / "thumbs").rglob("*.photo.jpg"):
        w, h = Image.open(p).size
        assert max(w, h) <= 480
    mtimes = tree(out)
    res2 = build_review(pred_folder, out)
    assert res2.thumbs_written == 0 and res2.thumbs_reused == 3 * n
    assert {k: v for k, v in tree(out).items() if k != "index.html"} == {k: v for k, v in mtimes.items() if k != "index.html"}
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # offline: no CDN, no remote asset


def test_missing_confidence_maps_say_how_to_get_them(tmp_path):
    pred = run_predict(tmp_path, probs=False, gt=False, n=3)
    res = build_review(pred, tmp_path / "r")
    assert res.thumbs_written == 6
    assert "--probs" in (tmp_path / "r" / "index.html").read_text()


def test_bad_sort_and_missing_folder_are_one_line_errors(tmp_path, pred_folder):
    from fcn_label.errors import InputError

    with pytest.raises(ValueError, match="choose confidence, low, iou, name"):
        build_review(pred_folder, tmp_path / "r", sort="best")
    with pytest.raises(InputError, match="predictions.csv"):
        build_review(tmp_path, tmp_path / "r")


@pytest.mark.browser
def test_page_in_chromium(pred_folder, tmp_path, browser):
    out = tmp_path / "review"
    build_review(pred_folder, out)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto((out / "index.html").as_uri())
    page.wait_for_selector(".row")
    rows = lambda: page.eval_on_selector_all(".row", "e => e.map(x => x.dataset.path)")  # noqa: E731
    # predict ran with --gt, so the default order is lowest IoU first
    assert rows() == expected(pred_folder, "iou")
    for key in ("confidence", "low", "iou"):
        page.select_option("#sort", key)
        assert rows() == expected(pred_folder, key), key
    confs = page.eval_on_selector_all(".row", "e => e.map(x => parseFloat(x.dataset.meanConfidence))")
    df = pd.read_csv(pred_folder / "predictions.csv")
    assert sorted(confs) == sorted(df["mean_confidence"])
    # the class filter hides exactly the rows whose mask lacks the class
    page.select_option("#sort", "confidence")
    order = expected(pred_folder, "confidence")
    members = masks_with_class(pred_folder)
    hid_some = False
    for name, paths in members.items():
        if not paths:
            continue
        page.select_option("#cls", name)
        assert rows() == [p for p in order if p in paths], name
        hid_some |= len(paths) < len(order)
    assert hid_some, "the fixture should have a class missing from some masks"
    page.select_option("#cls", "")
    assert rows() == order
    # click to enlarge, Escape to close
    first = page.locator(".row img").first
    src = first.get_attribute("src")
    first.click()
    assert page.locator("#lightbox").is_visible()
    assert page.get_attribute("#lb-img", "src") == src
    assert page.evaluate("document.getElementById('lb-img').naturalWidth") > 0
    page.keyboard.press("Escape")
    assert not page.locator("#lightbox").is_visible()
    # every thumbnail of the page loads from disk
    page.select_option("#per", "0")
    page.evaluate("Promise.all([...document.images].filter(i => i.id !== 'lb-img').map(i => "
                  "{ i.loading = 'eager'; return i.decode(); }))")
    assert page.evaluate("[...document.querySelectorAll('.row img')].every(i => i.naturalWidth > 0)")
    assert page.locator(".row img").count() == 3 * len(order)
    assert not errors and not failed, (errors, failed)
    page.close()


def synthetic_rows(n: int, classes: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = rng.integers(1, len(classes) + 1)
        cs = list(rng.choice(classes, k, replace=False))
        fr = rng.dirichlet(np.ones(k))
        rel = f"seq{i // 1000:02d}/frame_{i:05d}"
        rows.append({"path": rel + ".png", "input": f"/data/{rel}.png", "rel": rel, "w": 480, "h": 360,
                     "mean_confidence": round(float(rng.uniform(0.3, 1)), 6),
                     "low_confidence_fraction": round(float(rng.uniform(0, 0.5)), 6), "mean_iou": None,
                     "classes": cs, "fractions": [round(float(f), 4) for f in fr],
                     "photo": f"thumbs/{rel}.photo.jpg", "overlay": f"thumbs/{rel}.overlay.jpg",
                     "conf": f"thumbs/{rel}.conf.jpg", "note": ""})
    return rows


CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"]


def test_ten_thousand_rows_page_size_and_time(tmp_path):
    rows = synthetic_rows(10_000, CLASSES)
    t = time.perf_counter()
    index = write_page(tmp_path, rows, CLASSES, {}, sort="confidence", has_confidence=True, title="10k")
    seconds = time.perf_counter() - t
    size = index.stat().st_size
    # about 400 bytes per image; generous bounds for a shared CPU
    print(f"write_page at 10,000 rows: {seconds:.2f}s, {size / 1e6:.1f} MB")
    assert size < 6_000_000, size
    assert seconds < 10, seconds


@pytest.mark.browser
def test_ten_thousand_rows_in_chromium(tmp_path, browser):
    rows = synthetic_rows(10_000, CLASSES)
    index = write_page(tmp_path, rows, CLASSES, {}, sort="confidence", has_confidence=True, title="10k")
    page = browser.new_page()
    page.route("**/thumbs/**", lambda r: r.abort())  # no thumbnails on disk here: only the page's own work
    t = time.perf_counter()
    page.goto(index.as_uri())
    page.wait_for_selector(".row")
    load = time.perf_counter() - t
    got = page.eval_on_selector_all(".row", "e => e.map(x => x.dataset.path)")
    want = [r["path"] for r in sorted(rows, key=lambda r: (r["mean_confidence"], r["path"]))]
    assert got == want[:100]  # paged: 100 rows in the DOM, the first page of the whole order
    page.click("#pager .next")
    assert page.eval_on_selector_all(".row", "e => e.map(x => x.dataset.path)") == want[100:200]
    t = time.perf_counter()
    page.select_option("#cls", "pole")
    refilter = time.perf_counter() - t
    by_path = {r["path"]: r for r in rows}
    pole = [p for p in want if "pole" in by_path[p]["classes"]]
    assert page.eval_on_selector_all(".row", "e => e.map(x => x.dataset.path)") == pole[:100]
    assert f"of {len(pole):,} images with this class" in page.text_content("#count")
    print(f"10,000 rows: page {index.stat().st_size / 1e6:.1f} MB, loaded and first page shown in {load:.2f}s, "
          f"class filter {refilter:.2f}s")
    assert load < 15 and refilter < 5, (load, refilter)
    page.close()


def _cli(args):
    from fcn_label.cli import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(args)
    return e.value.code or 0


def test_cli_review_and_its_errors(pred_folder, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(["review", str(pred_folder), "--out", str(out), "--sort", "low", "-q"]) == 0
    assert "10 images, 30 thumbnails written" in capsys.readouterr().err
    assert (out / "index.html").is_file()
    assert _cli(["review", str(pred_folder), "--out", str(out), "--sort", "best"]) == 2
    err = capsys.readouterr().err
    assert "choose confidence, low, iou, name" in err and "Traceback" not in err
    assert _cli(["review", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "folder not found" in err and len(err.strip().splitlines()) == 1
    assert _cli(["review", str(pred_folder), "--out", str(out), "--gt", str(tmp_path / "nogt")]) == 2
    assert "--gt" in capsys.readouterr().err


def page_data(index: Path) -> list[dict]:
    """The rows embedded in index.html, read back with the standard json module."""
    text = index.read_text()
    start = text.index('<script type="application/json" id="data">') + len('<script type="application/json" id="data">')
    return json.loads(text[start: text.index("</script>", start)])["rows"]


def test_review_gt_iou_matches_numpy(tmp_path):
    pred = run_predict(tmp_path, probs=False, gt=True, n=6)  # gt/ written; predict itself told of it too
    csv_iou = pd.read_csv(pred / "predictions.csv").set_index("mask")["mean_iou"]
    (pred / "predictions.csv").write_text(  # drop predict's IoU columns: review must compute them itself
        pd.read_csv(pred / "predictions.csv").iloc[:, :8].to_csv(index=False))
    build_review(pred, tmp_path / "r", gt=tmp_path / "gt")
    rows = page_data(tmp_path / "r" / "index.html")
    assert len(rows) == 6
    for r in rows:
        g = np.array(Image.open(tmp_path / "gt" / f"{r['rel']}.png")).astype(np.int64)
        m = np.array(Image.open(pred / f"{r['rel']}.png")).astype(np.int64)
        ious = []
        for c in range(5):  # IoU per class present in either, NumPy only (no ignore label in this ground truth)
            inter, union = ((g == c) & (m == c)).sum(), ((g == c) | (m == c)).sum()
            if union:
                ious.append(inter / union)
        assert r["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-6)
        assert r["mean_iou"] == pytest.approx(csv_iou[r["rel"] + ".png"], abs=1e-6)  # and predict's --gt agrees
    html = (tmp_path / "r" / "index.html").read_text()
    assert '<option value="iou" selected>' in html  # known IoU: lowest IoU first by default


def test_bad_inputs_are_one_line_each_and_the_page_is_written(tmp_path):
    pred = run_predict(tmp_path, probs=True, gt=False, n=4)
    lines = (pred / "predictions.csv").read_text().splitlines()
    lines.insert(2, "x.png,x.png,notanumber,3,0,road:1,0.5,0")  # a damaged row
    (pred / "predictions.csv").write_text("\n".join(lines) + "\n")
    df = pd.read_csv(pred / "predictions.csv")
    (pred / "confidence" / df["mask"][0]).write_bytes(b"not a png")  # a corrupt confidence map
    photo = Path(df["path"][3])
    photo.rename(photo.with_name("moved.png"))  # a photo that moved since predict ran
    res = build_review(pred, tmp_path / "r")
    assert res.images == 4
    assert len(res.problems) == 2, res.problems
    assert any("predictions.csv:3" in p and "unusable row" in p for p in res.problems)
    assert any("UnidentifiedImageError" in p or "cannot" in p for p in res.problems)
    assert all("\n" not in p for p in res.problems)
    rows = {r["rel"]: r for r in page_data(tmp_path / "r" / "index.html")}
    moved = rows[df["mask"][3][:-4]]
    assert moved["photo"] is None and "--images" in moved["note"] and moved["overlay"]  # overlay from the mask alone
    assert np.array(Image.open(tmp_path / "r" / moved["overlay"])).size > 0
    assert _cli(["review", str(pred), "--out", str(tmp_path / "r2"), "-q"]) == 1  # as predict: went on, exit 1


def test_refuses_to_write_through_a_symlink_out_of_out(tmp_path):
    pred = run_predict(tmp_path, probs=False, gt=False, n=2)
    out, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    (out / "thumbs").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "thumbs" / "b").symlink_to(elsewhere, target_is_directory=True)
    res = build_review(pred, out)
    assert not list(elsewhere.iterdir())
    assert any("outside --out" in p for p in res.problems)


@pytest.mark.slow
def test_build_review_at_ten_thousand_images(tmp_path):
    """The whole generator (CSV, one tiny mask per image, thumbnails) at 10,000 rows."""
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,mask,width,height,seconds,classes,mean_confidence,low_confidence_fraction"]
    pal = [v for c in range(256) for v in (c * 40 % 256, c * 90 % 256, c * 150 % 256)]
    for i in range(10_000):
        rel = f"s{i // 1000}/f{i:05d}"
        (pred / rel).parent.mkdir(exist_ok=True)
        m = Image.fromarray(rng.integers(0, 3, (12, 16), dtype=np.uint8), mode="P")
        m.putpalette(pal)
        m.save(pred / f"{rel}.png")
        lines.append(f"/nowhere/{rel}.jpg,{rel}.png,16,12,0.1,class0:0.4;class1:0.3;class2:0.3,"
                     f"{rng.uniform(0.3, 1):.6f},{rng.uniform(0, 0.5):.6f}")
    (pred / "predictions.csv").write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    res = build_review(pred, tmp_path / "r", workers=2)
    first = time.perf_counter() - t
    t = time.perf_counter()
    res2 = build_review(pred, tmp_path / "r", workers=2)
    again = time.perf_counter() - t
    size = (tmp_path / "r" / "index.html").stat().st_size
    print(f"10,000 images: {first:.1f}s first run, {again:.1f}s re-run, index.html {size / 1e6:.1f} MB")
    assert res.images == 10_000 and res.thumbs_written == 10_000 and res2.thumbs_reused == 10_000
    assert size < 8_000_000 and first < 300 and again < 60


def test_plain_index_masks_get_colours(tmp_path):
    pred = run_predict(tmp_path, probs=False, gt=False, n=10, palette="none")
    assert Image.open(next(pred.glob("*/*.png"))).mode == "L"
    build_review(pred, tmp_path / "r")
    coloured = 0
    for r in page_data(tmp_path / "r" / "index.html"):
        m = np.array(Image.open(pred / f"{r['rel']}.png"))
        coloured += (m > 0).mean() > 0.2
        ph = np.array(Image.open(tmp_path / "r" / r["photo"]).convert("RGB")).astype(float)
        ov = np.array(Image.open(tmp_path / "r" / r["overlay"]).convert("RGB")).astype(float)
        assert ov.shape[:2] == m.shape  # small photos are not enlarged
        want = 0.5 * ph + 0.5 * np.array([voc_colour(v) for v in range(256)], float)[m]
        assert np.abs(ov - want).mean() < 6  # JPEG's error; blending with the raw index values is far off
    assert coloured >= 2  # classes other than 0 (black in VOC's map) cover a fifth of some masks


@pytest.mark.browser
def test_odd_file_names_load_in_chromium(tmp_path, browser):
    imgs = tmp_path / "odd"
    imgs.mkdir()
    names = ["a #1.png", "50% off?.png", "ünï cødé.png"]
    for i, n in enumerate(names):
        Image.fromarray(rand_image(32, 40, seed=i)).save(imgs / n)
    from fcn_label.predict import PredictJob, PredictOptions, discover
    from fcn_label.predict import Predictor
    from support.review_folder import tempered

    items, problems = discover([imgs], tmp_path / "pred")
    PredictJob(Predictor(tempered(7), device="cpu"), PredictOptions(out=tmp_path / "pred", probs=True, workers=0)).run(items, problems)
    build_review(tmp_path / "pred", tmp_path / "r")
    page = browser.new_page()
    page.goto((tmp_path / "r" / "index.html").as_uri())
    page.wait_for_selector(".row")
    page.evaluate("Promise.all([...document.querySelectorAll('.row img')].map(i => { i.loading = 'eager'; return i.decode(); }))")
    assert sorted(page.eval_on_selector_all(".row", "e => e.map(x => x.dataset.path)")) == sorted(names)
    assert page.evaluate("[...document.querySelectorAll('.row img')].every(i => i.naturalWidth > 0)")
    assert page.locator(".row img").count() == 9
    page.close()
