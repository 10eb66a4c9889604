"""predict: batching, tiling, formats and outputs, against plain references."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fcn_label.cli import run_cli
from fcn_label.predict import PredictJob, PredictOptions, discover
from fcn_label.model import FCN, FCNConfig
from fcn_label.predict import Predictor
from fcn_label.checkpoint import save_checkpoint
from support.helpers import PALETTE, make_checkpoint, one_at_a_time, rand_image, voc_colour


@pytest.mark.parametrize("padding,bn", [("caffe", False), ("same", True)])
def test_batched_equals_one_at_a_time(padding, bn):
    ck = make_checkpoint(padding, bn)
    sizes = [(37, 53), (37, 53), (64, 48), (37, 53), (1, 1), (64, 48), (37, 53), (20, 90)]
    imgs = [rand_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    preds = Predictor(ck, device="cpu").predict_arrays(imgs, batch_size=3)
    for img, p in zip(imgs, preds):
        ref = one_at_a_time(ck, img)
        assert p.labels.shape == img.shape[:2]
        assert (p.labels == ref).mean() == 1.0
        assert p.confidence.min() >= 1.0 / 5 - 1e-6 and p.confidence.max() <= 1.0


def naive_tiled(pred, img, tile, overlap):
    """Reference slide inference: full-size accumulators, no banding."""
    H, W = img.shape[:2]
    stride = int(tile * (1 - overlap))
    ys = sorted({min(y, H - tile) for y in range(0, max(1, H - tile + stride), stride)}) if H > tile else [0]
    xs = sorted({min(x, W - tile) for x in range(0, max(1, W - tile + stride), stride)}) if W > tile else [0]
    acc = torch.zeros(pred.num_classes, H, W)
    cnt = torch.zeros(H, W)
    for y in ys:
        for x in xs:
            t = img[y:y + tile, x:x + tile]
            p = pred.forward(pred.preprocess([np.ascontiguousarray(t)]))[0]
            acc[:, y:y + t.shape[0], x:x + t.shape[1]] += p
            cnt[y:y + t.shape[0], x:x + t.shape[1]] += 1
    assert cnt.min() >= 1
    return (acc / cnt).argmax(0).numpy()


def test_tiled_banding_equals_full_accumulator():
    ck = make_checkpoint("same", True)
    pred = Predictor(ck, device="cpu", tile=48, tile_overlap=0.25)
    img = rand_image(150, 131, 7)
    out = pred.predict_tiled(img)
    assert out.labels.shape == (150, 131)
    ref = naive_tiled(pred, img, 48, 0.25)
    assert (out.labels == ref).mean() == 1.0


def test_tile_larger_than_image_is_untiled():
    ck = make_checkpoint()
    img = rand_image(40, 60, 3)
    a = Predictor(ck, device="cpu", tile=64).predict_arrays([img])[0]
    assert (a.labels == one_at_a_time(ck, img)).all()
    big = Predictor(ck, device="cpu", tile_threshold=1000)  # auto-tiles above 1000 pixels, 1024 tiles
    assert big.needs_tiling(img.shape) and (big.predict_arrays([img])[0].labels == one_at_a_time(ck, img)).all()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(), path)
    return path


def write_images(folder: Path, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        Image.fromarray(rand_image(h, w, i)).save(p)
        out.append(p)
    return out


def run_job(model_file, inputs, out, **kw):
    from fcn_label.checkpoint import load_checkpoint
    ck = load_checkpoint(model_file)
    items, problems = discover([str(i) for i in inputs], out)
    kw.setdefault("procs", 1)  # this process's pipeline (the CLI tests run predict's default, one process per core)
    job = PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=out, workers=kw.pop("workers", 0), **kw))
    return job.run(items, problems)


def test_outputs_png_coco_csv(tmp_path, model_file):
    write_images(tmp_path / "in" / "a", [(37, 53), (64, 48)])
    write_images(tmp_path / "in", [(30, 30)])
    res = run_job(model_file, [tmp_path / "in"], tmp_path / "out", workers=2)
    assert res.done == 3 and not res.failed
    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    names = sorted(im["file_name"] for im in coco["images"])
    assert names == ["a/img0.png", "a/img1.png", "img0.png"]
    for im in coco["images"]:
        png = Image.open(tmp_path / "out" / im["file_name"])
        assert png.mode == "P" and png.size == (im["width"], im["height"])
        assert png.getpalette()[:15] == [v for c in PALETTE for v in c]
        labels = np.asarray(png)
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert sorted(a["category_id"] - 1 for a in anns) == sorted(np.unique(labels).tolist())
        for a in anns:
            decoded = mask_utils.decode(a["segmentation"])  # pycocotools is the reference decoder
            assert np.array_equal(decoded.astype(bool), labels == a["category_id"] - 1)
            assert a["area"] == int((labels == a["category_id"] - 1).sum())
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(labels == a["category_id"] - 1)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 3
    for r in rows:
        fr = dict(kv.split(":") for kv in r["classes"].split(";"))
        assert abs(sum(float(v) for v in fr.values()) - 1) < 1e-3


def test_palette_none_writes_L_and_values_are_class_indices(tmp_path, model_file):
    (img,) = write_images(tmp_path / "in", [(33, 41)])
    run_job(model_file, [img], tmp_path / "out", palette="none")
    png = Image.open(tmp_path / "out" / "img0.png")
    assert png.mode == "L"
    from fcn_label.checkpoint import load_checkpoint
    ref = one_at_a_time(load_checkpoint(model_file), np.asarray(Image.open(img).convert("RGB")))
    assert np.array_equal(np.asarray(png), ref)


def test_rerun_skips_done_and_overwrite_redoes(tmp_path, model_file):
    write_images(tmp_path / "in", [(20, 20), (20, 30)])
    first = run_job(model_file, [tmp_path / "in"], tmp_path / "out")
    before = (tmp_path / "out" / "predictions.json").read_bytes()
    # as if killed before this one finished: no mask, and no line in the record store
    (tmp_path / "out" / "img1.png").unlink()
    # one segment per writing process (several with encoding processes): drop img1's line from the one holding it
    (seg,) = [s for s in (tmp_path / "out" / ".fcn-label" / "records").glob("*.jsonl") if b'"img1.png"' in s.read_bytes()]
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(b"".join(l for l in lines if json.loads(l)["file_name"] != "img1.png"))
    second = run_job(model_file, [tmp_path / "in"], tmp_path / "out")
    assert (first.done, second.done, second.skipped) == (2, 1, 1)
    assert (tmp_path / "out" / "predictions.json").read_bytes() == before
    third = run_job(model_file, [tmp_path / "in"], tmp_path / "out", overwrite=True)
    assert third.done == 2 and third.skipped == 0
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_formats_and_exif_orientation(tmp_path, model_file):
    d = tmp_path / "in"
    d.mkdir()
    rgb = rand_image(30, 50, 1)
    Image.fromarray(rgb).convert("L").save(d / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(d / "pal.gif")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "grey16.png")
    Image.fromarray(rgb).save(d / "x.webp")
    Image.fromarray(rgb).save(d / "x.tiff")
    Image.fromarray(rgb).save(d / "x.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(d / "rot.jpg", exif=exif)
    res = run_job(model_file, [d], tmp_path / "out")
    assert res.done == 9 and not res.failed
    sizes = {f.stem: Image.open(f).size for f in (tmp_path / "out").glob("*.png")}
    assert len(sizes) == 9
    # (W, H): the stored 50x30 photo is shown rotated, 30 wide and 50 high, and its mask must match that
    assert sizes.pop("rot") == (30, 50)
    assert set(sizes.values()) == {(50, 30)}


def test_shards_split_without_overlap(tmp_path, model_file):
    write_images(tmp_path / "in", [(16, 16)] * 5)
    a = run_job(model_file, [tmp_path / "in"], tmp_path / "out", shard=(0, 2))
    b = run_job(model_file, [tmp_path / "in"], tmp_path / "out", shard=(1, 2))
    assert (a.total, b.total, a.done + b.done) == (3, 2, 5)
    assert len(list((tmp_path / "out").glob("img*.png"))) == 5
    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(coco["images"]) == 5  # the last shard to finish assembles everything done so far


def test_never_writes_outside_out(tmp_path, model_file):
    (img,) = write_images(tmp_path / "elsewhere", [(16, 16)])
    listdir = tmp_path / "lists" / "deep"
    listdir.mkdir(parents=True)
    (listdir / "files.txt").write_text(f"../../elsewhere/img0.png\n{img.resolve()}\nmissing.png\n")
    out = tmp_path / "out"
    res = run_job(model_file, [listdir / "files.txt"], out)
    assert res.done == 1 and len(res.failed) == 1 and "missing.png" in res.failed[0].reason
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "out" not in p.relative_to(tmp_path).parts[:1]]
    assert sorted(p.name for p in written) == ["files.txt", "img0.png", "model.pt"]
    for p in out.rglob("*"):
        assert out.resolve() in p.resolve().parents


def test_output_folder_inside_input_is_not_read_back(tmp_path, model_file):
    write_images(tmp_path / "in", [(16, 16), (16, 20)])
    run_job(model_file, [tmp_path / "in"], tmp_path / "in" / "masks")
    items, _ = discover([tmp_path / "in"], tmp_path / "in" / "masks")
    assert [it.rel for it in items] == ["img0", "img1"]


def test_duplicate_stems_do_not_collide(tmp_path, model_file):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(rand_image(16, 16, 1)).save(d / "a.png")
    Image.fromarray(rand_image(16, 24, 2)).save(d / "a.jpg")
    res = run_job(model_file, [d], tmp_path / "out")
    assert res.done == 2
    sizes = sorted(Image.open(p).size for p in (tmp_path / "out").glob("a*.png"))
    assert sizes == [(16, 16), (24, 16)]


def test_gt_adds_per_image_iou(tmp_path, model_file):
    (img,) = write_images(tmp_path / "in", [(24, 32)])
    from fcn_label.checkpoint import load_checkpoint
    ref = one_at_a_time(load_checkpoint(model_file), np.asarray(Image.open(img).convert("RGB")))
    gt = ref.copy().astype(np.uint8)
    gt[:12] = 255  # ignored
    gt[12:14] = (gt[12:14] + 1) % 5  # two wrong rows
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt, mode="L").save(tmp_path / "gt" / "img0.png")
    run_job(model_file, [tmp_path / "in"], tmp_path / "out", gt=tmp_path / "gt")
    row = next(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert float(row["pixel_accuracy"]) == pytest.approx((10 * 32) / (12 * 32), abs=1e-6)


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in args])
    return e.value.code, capsys.readouterr()


def test_cli_summary_and_failures(tmp_path, model_file, capsys):
    write_images(tmp_path / "in", [(16, 16)])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out = cli(capsys, "predict", tmp_path / "in", "--out", tmp_path / "out", "-w", model_file, "-q", "--parallel", "workers=0")
    assert code == 1
    assert "broken.jpg" in out.err and "done 1" in out.err and "failed 1" in out.err
    assert "Traceback" not in out.err
    rows = list(csv.DictReader(open(tmp_path / "out" / "failures.csv")))
    assert len(rows) == 1 and rows[0]["path"].endswith("broken.jpg")
    assert list(rows[0]) == ["path", "stage", "reason"] and rows[0]["stage"] == "decode"
    assert rows[0]["reason"].startswith(rows[0]["path"])


def test_failure_stages_name_where_each_input_failed(tmp_path, model_file, monkeypatch):
    """input (discover), decode, infer and write: one row each, in the path,stage,reason schema."""
    from fcn_label.predict.sink import Sink

    write_images(tmp_path / "in", [(16, 16), (16, 16), (24, 24)])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    real_write = Sink.write

    def refuse_img1(self, it, *a):
        if it.rel == "img1":
            raise PermissionError(13, "Permission denied")
        return real_write(self, it, *a)

    def out_of_memory(self, img):
        raise MemoryError("too big")

    monkeypatch.setattr(Sink, "write", refuse_img1)
    monkeypatch.setattr(Predictor, "needs_tiling", lambda self, shape: shape[0] == 24)  # img2 runs alone
    monkeypatch.setattr(Predictor, "predict_tiled", out_of_memory)
    res = run_job(model_file, [tmp_path / "in", tmp_path / "gone"], tmp_path / "out", encoders=0)
    stages = {Path(f.path).name: f.stage for f in res.failed}
    assert stages == {"gone": "input", "broken.png": "decode", "img2.png": "infer", "img1.png": "write"}, stages
    rows = list(csv.DictReader(open(tmp_path / "out" / "failures.csv", encoding="utf-8")))
    assert {Path(r["path"]).name: r["stage"] for r in rows} == stages
    assert all(r["reason"].startswith(r["path"]) for r in rows)


def test_parallel_is_one_expert_option_checked_in_one_line(tmp_path, model_file, capsys):
    from fcn_label.predict.parallel import Parallel, parse_parallel

    assert parse_parallel("procs=1, workers=0") == Parallel(procs=1, workers=0)
    assert parse_parallel(None) == Parallel()
    for bad, words in (("threads=2", "KEY procs, workers or encoders"), ("procs=0", "procs must be at least 1"),
                       ("workers=x", "'x' is not a whole number"), ("procs=1,procs=2", "each once")):
        code, out = cli(capsys, "predict", tmp_path, "--out", tmp_path / "out", "-w", model_file, "--parallel", bad)
        assert code == 2 and words in out.err and "Traceback" not in out.err, (bad, out.err)
        assert len(out.err.strip().splitlines()) == 1, out.err
    code, out = cli(capsys, "predict", "--help")
    assert code == 0 and "Expert" in out.out and "--parallel" in out.out
    for gone in ("--workers", "--encoders", "--procs"):
        assert gone not in out.out


def test_cli_user_errors_are_one_line(tmp_path, model_file, capsys):
    code, out = cli(capsys, "predict", tmp_path / "nope", "--out", tmp_path / "out", "-w", model_file)
    assert code == 2 and "nope" in out.err and "Traceback" not in out.err
    code, out = cli(capsys, "predict", tmp_path, "--out", tmp_path / "out", "-w", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in out.err and "Traceback" not in out.err
    code, out = cli(capsys, "predict", tmp_path, "--out", tmp_path / "out", "-w", model_file, "--palette", "rainbow")
    assert code == 2 and "'model', 'voc', 'none'" in out.err


def test_cli_classes_file_names_and_colours_a_bare_state_dict(tmp_path, capsys):
    """A pytorch-fcn style state dict plus --classes: names reach the COCO file, colours the PNG palette."""
    torch.manual_seed(0)
    m = FCN(FCNConfig(arch="fcn16s", num_classes=3, width=0.0625, fc_channels=16))
    torch.save(m.state_dict(), tmp_path / "fcn16s.pth")
    (tmp_path / "classes.txt").write_text("ground 1 2 3\nsky blue 4 5 6\nthing 7 8 9\n")
    write_images(tmp_path / "in", [(20, 24)])
    code, out = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "out", "-w", tmp_path / "fcn16s.pth",
                    "--arch", "fcn16s", "--classes", tmp_path / "classes.txt", "-q", "--parallel", "workers=0")
    assert code in (0, None), out.err
    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["ground", "sky blue", "thing"]
    assert Image.open(tmp_path / "out" / "img0.png").getpalette()[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("padding,bn", [("caffe", False), ("same", True)])
def test_flip_averages_the_image_and_its_mirror(padding, bn):
    ck = make_checkpoint(padding, bn)
    imgs = [rand_image(37, 53, 0), rand_image(37, 53, 1), rand_image(64, 48, 2)]
    pred = Predictor(ck, device="cpu", flip=True)
    out = pred.predict_arrays(imgs, batch_size=2)
    # reference: two plain forward passes, softmax, mirror the second back, average
    m = ck.build()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for img, p in zip(imgs, out):
        x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 255.0 - mean) / std
        with torch.no_grad():
            ref = (torch.softmax(m(x), 1) + torch.softmax(m(x.flip(-1)), 1).flip(-1)) / 2
        conf, labels = ref.max(1)
        assert (p.labels == labels[0].numpy()).mean() >= 0.999
        # NHWC vs NCHW summation order: a near-tie pixel of this random net may move a little
        assert (np.abs(p.confidence - conf[0].numpy()) < 1e-4).mean() >= 0.999
    # the averaged prediction of a mirrored image is the mirrored prediction
    mirrored = pred.predict_arrays([np.ascontiguousarray(imgs[0][:, ::-1])])[0]
    assert (mirrored.labels == out[0].labels[:, ::-1]).mean() >= 0.999
    plain = Predictor(ck, device="cpu").predict_arrays(imgs[:1])[0]
    assert not np.allclose(plain.confidence, out[0].confidence)  # flip did change something


def test_gt_takes_any_layout_and_scores_like_the_mask_folder(tmp_path, fixtures_dir):
    """predict --gt reads ground truth through the datasets package: a VOC root gives the same
    per-image figures as its SegmentationClass/ folder, which is checked against a NumPy IoU."""
    import pandas as pd

    voc = fixtures_dir / "voc"
    for name, gt in (("folder", voc / "SegmentationClass"), ("root", voc)):
        with pytest.raises(SystemExit) as e:
            run_cli(["predict", str(voc / "JPEGImages"), "--out", str(tmp_path / name), "--gt", str(gt), "-q"])
        assert e.value.code == 0
    folder = pd.read_csv(tmp_path / "folder" / "predictions.csv")
    root = pd.read_csv(tmp_path / "root" / "predictions.csv")
    cols = [c for c in folder.columns if c != "seconds"]
    pd.testing.assert_frame_equal(folder[cols], root[cols])
    row = folder.iloc[0]
    gt = np.array(Image.open(voc / "SegmentationClass" / f"{Path(row['mask']).stem}.png"))
    pred = np.array(Image.open(tmp_path / "folder" / row["mask"]))
    valid = (gt != 11) & (gt < 11)  # the shipped CamVid model: 11 classes, ignore label 11
    assert row["pixel_accuracy"] == pytest.approx((gt[valid] == pred[valid]).mean(), abs=1e-6)


def test_encoding_processes_write_the_same_files_as_in_process_threads(tmp_path, model_file):
    """encoders=2 (forked encoding processes, one record segment each) against encoders=0: every output
    byte-identical, every record the same, and the masks equal the plain one-at-a-time argmax."""
    from fcn_label.checkpoint import load_checkpoint

    paths = write_images(tmp_path / "in", [(37, 53), (64, 48), (30, 30), (64, 48), (20, 26)] * 2)
    opts = dict(overlay=True, probs=True, gt=None)
    a = run_job(model_file, [tmp_path / "in"], tmp_path / "threads", encoders=0, **opts)
    b = run_job(model_file, [tmp_path / "in"], tmp_path / "pool", encoders=2, **opts)
    assert (a.done, b.done, len(a.failed), len(b.failed)) == (10, 10, 0, 0)

    def files(root):
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and ".fcn-label" not in p.parts and p.name != "predictions.csv")

    assert files(tmp_path / "threads") == files(tmp_path / "pool") and len(files(tmp_path / "pool")) >= 30
    for rel in files(tmp_path / "threads"):
        assert (tmp_path / "threads" / rel).read_bytes() == (tmp_path / "pool" / rel).read_bytes(), rel

    def records(root):
        segs = list((root / ".fcn-label" / "records").glob("*.jsonl"))
        recs = [json.loads(l) for s in segs for l in s.read_bytes().splitlines()]
        for r in recs:
            r.pop("seconds")
        return len(segs), sorted(recs, key=lambda r: r["file_name"])

    (n_a, recs_a), (n_b, recs_b) = records(tmp_path / "threads"), records(tmp_path / "pool")
    assert recs_a == recs_b and len(recs_b) == 10
    assert n_a == 1 and n_b >= 1  # the main process's one segment; one per encoding process that wrote
    ck = load_checkpoint(model_file)
    for p in paths:
        ref = one_at_a_time(ck, np.asarray(Image.open(p).convert("RGB")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "pool" / f"{p.stem}.png")), ref), p


def test_cpu_default_batches_small_images_by_pixel_count_and_stays_exact(tmp_path, model_file, monkeypatch):
    """No --batch-size on the CPU: tiny same-size images share forward passes (up to 0.3 Mpx, 32 at most),
    a 480x360 frame goes alone, and every mask equals the plain one-at-a-time argmax."""
    from fcn_label.checkpoint import load_checkpoint

    ck = load_checkpoint(model_file)
    pred = Predictor(ck, device="cpu")
    assert pred.batch_limit((360, 480)) == 1 and pred.batch_limit((48, 64)) == 32
    assert pred.batch_limit((240, 320)) == 300_000 // (240 * 320) and pred.batch_limit((48, 64), 4) == 4
    seen = []
    logits = pred.logits
    monkeypatch.setattr(pred, "logits", lambda x: seen.append(tuple(x.shape)) or logits(x))
    imgs = [rand_image(48, 64, i) for i in range(40)]
    out = pred.predict_arrays(imgs)
    assert [s[0] for s in seen] == [32, 8]
    model = ck.build()
    for img, p in zip(imgs, out):
        assert np.array_equal(p.labels, one_at_a_time(ck, img, model))

    # the job: same-size small images batched by default, masks exact
    paths = write_images(tmp_path / "in", [(24, 32)] * 12 + [(30, 20)] * 3)
    items, problems = discover([str(tmp_path / "in")], tmp_path / "out")
    seen.clear()
    res = PredictJob(pred, PredictOptions(out=tmp_path / "out", workers=0, procs=1)).run(items, problems)
    assert res.done == 15 and not res.failed
    assert sorted(s[0] for s in seen) == [3, 12]
    for p in paths:
        ref = one_at_a_time(ck, np.asarray(Image.open(p).convert("RGB")), model)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{p.stem}.png")), ref), p


def test_labels_and_confidence_match_softmax_then_max():
    """The logits shortcut against the paper's per-pixel softmax (torch.softmax in float64, then max):
    labels are the first highest class (ties included), confidences within float32 rounding."""
    from fcn_label.predict.predictor import labels_and_confidence

    rng = np.random.default_rng(0)
    for c, h, w in [(11, 37, 53), (2, 5, 7), (21, 64, 48), (1, 3, 4)]:
        s = (rng.standard_normal((c, h, w)) * 4).astype(np.float32)
        s[:, 0, :] = 1.5  # every class tied on the first row: argmax takes the first
        if c > 2:
            s[2, 1, :] = s[1, 1, :] = s[:, 1, :].max(axis=0) + 1  # classes 1 and 2 tied for the best
        labels, conf = labels_and_confidence(s)
        probs = torch.softmax(torch.from_numpy(s).double(), dim=0)
        ref_conf, ref_labels = probs.max(dim=0)
        assert labels.dtype == np.uint8 and conf.dtype == np.float32 and labels.shape == conf.shape == (h, w)
        assert np.array_equal(labels, np.argmax(s, axis=0))  # NumPy's argmax: first maximum
        assert np.array_equal(labels, ref_labels.numpy())
        np.testing.assert_allclose(conf, ref_conf.numpy(), rtol=0, atol=1e-6)
        assert (labels[0] == 0).all() and np.allclose(conf[0], 1.0 / c)
        if c > 2:
            assert (labels[1] == 1).all()


def test_inference_processes_write_what_one_process_writes(tmp_path, model_file):
    """procs=2 (forked pipelines, one-thread networks, a record segment each) against procs=1: the same
    files, the same records, failures reported once, masks equal to the plain one-at-a-time argmax."""
    from fcn_label.checkpoint import load_checkpoint

    paths = write_images(tmp_path / "in", [(37, 53), (64, 48), (30, 30), (64, 48), (20, 26)] * 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    opts = dict(overlay=True, probs=True, gt=None)
    a = run_job(model_file, [tmp_path / "in"], tmp_path / "one", procs=1, **opts)
    progress = []
    ck = load_checkpoint(model_file)
    items, problems = discover([str(tmp_path / "in")], tmp_path / "two")
    job = PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=tmp_path / "two", workers=0, procs=2, **opts),
                     on_progress=lambda done, total: progress.append((done, total)))
    assert job.procs_for(len(items)) == 2
    b = job.run(items, problems)
    assert (a.done, b.done) == (10, 10) and not b.stopped
    assert [f.path for f in a.failed] == [f.path for f in b.failed] == [str(tmp_path / "in" / "broken.png")]
    assert progress[0] == (0, 11) and progress[-1] == (10, 11) and len(progress) == 11

    def files(root):
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and ".fcn-label" not in p.parts and p.name != "predictions.csv")

    assert files(tmp_path / "one") == files(tmp_path / "two") and len(files(tmp_path / "two")) >= 32
    for rel in files(tmp_path / "one"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel

    def records(root):
        segs = list((root / ".fcn-label" / "records").glob("*.jsonl"))
        recs = [json.loads(l) for s in segs for l in s.read_bytes().splitlines()]
        for r in recs:
            r.pop("seconds")
        return len(segs), sorted(recs, key=lambda r: r["file_name"])

    (n_a, recs_a), (n_b, recs_b) = records(tmp_path / "one"), records(tmp_path / "two")
    assert recs_a == recs_b and len(recs_b) == 10 and (n_a, n_b) == (1, 2)
    for p in paths:
        ref = one_at_a_time(ck, np.asarray(Image.open(p).convert("RGB")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "two" / f"{p.stem}.png")), ref), p
    # a re-run finds everything done, forks nothing
    again = PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=tmp_path / "two", procs=2)).run(items, problems)
    assert (again.done, again.skipped) == (0, 10)


def test_default_workers_follow_the_device_and_the_core_count(monkeypatch):
    """One decoding worker on the CPU (the network wants the cores); on a GPU the host's cores decode,
    leaving the encoders and the main process theirs: never more than the machine has, never zero."""
    from fcn_label.predict import parallel

    for cores in (1, 2, 3, 4, 16, 64):
        monkeypatch.setattr(parallel, "cores", lambda c=cores: c)
        assert parallel.default_workers(torch.device("cpu")) == 1
        gpu = parallel.default_workers(torch.device("cuda"))
        assert 1 <= gpu <= 8
        assert gpu == 1 or gpu + parallel.default_encoders() + 1 <= cores, (cores, gpu)
    monkeypatch.setattr(parallel, "cores", lambda: 16)
    assert parallel.default_workers(torch.device("cuda")) > 4  # a 16-core GPU host: more than the old default of 1


def test_workers_default_reaches_the_loader(tmp_path, model_file, monkeypatch):
    """PredictOptions(workers=None) asks default_workers for this predictor's device."""
    from fcn_label.checkpoint import load_checkpoint
    from fcn_label.predict import pipeline

    asked = []
    monkeypatch.setattr(pipeline, "default_workers", lambda device: asked.append(device) or 0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(src / "a.png")
    pred = Predictor(load_checkpoint(model_file), device="cpu")
    items, _ = discover([src], tmp_path / "o")
    res = PredictJob(pred, PredictOptions(out=tmp_path / "o", procs=1)).run(items)
    assert res.done == 1 and asked == [torch.device("cpu")]


def test_procs_refuses_what_cannot_fork_and_defaults_by_backend(tmp_path, model_file):
    from fcn_label.checkpoint import load_checkpoint
    from fcn_label.errors import ConfigError
    from fcn_label.predict.parallel import default_procs

    ck = load_checkpoint(model_file)
    pred = Predictor(ck, device="cpu")
    assert default_procs(torch.device("cpu"), "eager") == min(16, len(__import__("os").sched_getaffinity(0)))
    assert default_procs(torch.device("cpu"), "ort-int8") == 1
    assert default_procs(torch.device("cuda"), "eager") == 1
    assert PredictJob(pred, PredictOptions(out=tmp_path / "o", procs=4)).procs_for(3) == 3  # never more than images
    pred.backend = "ort-int8"  # the check reads the kind only: no ONNX Runtime needed here
    with pytest.raises(ConfigError, match="--parallel procs=2 works with --backend eager or bf16"):
        PredictJob(pred, PredictOptions(out=tmp_path / "o", procs=2)).procs_for(10)


def test_coco_annotations_decode_to_the_class_masks_and_score_their_mean_confidence():
    """Every present class: pycocotools' decoder gives back exactly its pixels; area and bbox as COCO
    counts them; the score is the mean confidence over those pixels (float64 reference)."""
    from fcn_label.predfolder.outputs import coco_annotations

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, (41, 57)).astype(np.uint8)
    labels[labels == 4] = 5  # a class that is absent
    conf = rng.random((41, 57), dtype=np.float32)
    anns = coco_annotations(labels, conf, 7)
    assert [a["category_id"] - 1 for a in anns] == [0, 1, 2, 3, 5]
    for a in anns:
        c = a["category_id"] - 1
        m = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        assert np.array_equal(m.astype(bool), labels == c)
        assert a["area"] == (labels == c).sum()
        ys, xs = np.nonzero(labels == c)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["score"] == pytest.approx(conf[labels == c].astype(np.float64).mean(), abs=2e-6)


def test_mask_png_palette_is_the_models_then_vocs_for_each_palette_in_turn():
    """Mask PNGs carry the model's colours first and VOC's standard colours after them (VOC's
    bit-interleaving, written out here as the reference); VOC's colour map is cached, so a second
    palette must not be served the first one's table nor change the cached map."""
    import io

    from fcn_label.predfolder.outputs import encode_png

    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for pal in ([(1, 2, 3), (4, 5, 6)], [[7, 8, 9]], [(1, 2, 3), (4, 5, 6)], None):
        im = Image.open(io.BytesIO(encode_png(labels, pal)))
        if pal is None:
            assert im.mode == "L"
        else:
            got = im.getpalette()
            assert got[: 3 * len(pal)] == [v for c in pal for v in c]
            assert got[3 * len(pal): 36] == [v for i in range(len(pal), 12) for v in voc_colour(i)]
        assert np.array_equal(np.asarray(im), labels)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (17, 23), (60, 80)])
def test_coco_annotations_are_the_strings_pycocotools_encode_gives(shape):
    """The runs-based encoder gives byte for byte what ``mask.encode`` gives for each class's mask
    (the reference: one Fortran-ordered mask per class), for noise, blocks, and classes that start
    at the first pixel or end at the last."""
    from fcn_label.predfolder.outputs import coco_annotations

    rng = np.random.default_rng(sum(shape))
    h, w = shape
    noise = rng.integers(0, 4, shape)
    blocks = np.kron(rng.integers(0, 4, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4), int))[:h, :w]
    single = np.zeros(shape, int)
    single[-1, -1] = 3
    for labels in (noise, blocks, single, np.full(shape, 2)):
        labels = labels.astype(np.uint8)
        anns = coco_annotations(labels, rng.random(shape, dtype=np.float32), 4)
        want = [(c + 1, mask_utils.encode(np.asfortranarray(labels == c).astype(np.uint8))["counts"].decode())
                for c in range(4) if (labels == c).any()]
        assert [(a["category_id"], a["segmentation"]["counts"]) for a in anns] == want
        assert all(a["segmentation"]["size"] == [h, w] for a in anns)


def test_streamed_predictions_json_is_json_dumps_of_the_in_memory_results(tmp_path, model_file):
    """predictions.json, streamed (annotations straight to the file, image entries spooled), byte for
    byte what json.dumps gives for the whole results built in memory; and a valid COCO results file."""
    from fcn_label.checkpoint import load_checkpoint
    from fcn_label.predfolder.reports import coco_results

    write_images(tmp_path / "in", [(37, 53), (64, 48), (30, 30)])
    res = run_job(model_file, [tmp_path / "in"], tmp_path / "out")
    assert res.done == 3
    ck = load_checkpoint(model_file)
    items, _ = discover([str(tmp_path / "in")], tmp_path / "out")
    job = PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=tmp_path / "out"))
    expected = json.dumps(coco_results(job.load_records(items), job.classes, ck.metadata.get("name", "")))
    text = (tmp_path / "out" / "predictions.json").read_text()
    assert text == expected
    coco = json.loads(text)
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert len(coco["annotations"]) >= 3 and [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert {a["image_id"] for a in coco["annotations"]} == {1, 2, 3}
