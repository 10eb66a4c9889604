"""CVAT "Segmentation mask 1.1" export, checked with datumaro (CVAT's own importer), and read back."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from fcn_label.datasets import GroundTruth, detect_layout, load_pairs
from fcn_label.export import export
from fcn_label.predfolder.layout import EXPORT_MARKER
from fcn_label.train.data import SegmentationDataset
from fcn_label.errors import InputError

from support.export_folder import open_corrections, classes, masks, palette, run_cli


def _datumaro_masks(root) -> dict[str, np.ndarray]:
    dm = pytest.importorskip("datumaro", reason="reads the CVAT export back with datumaro (CVAT's importer); "
                             'install it with: .venv/bin/pip install -e ".[interop-test]"')
    ds = dm.Dataset.import_from(str(root), "voc_segmentation")
    names = [c.name for c in ds.categories()[dm.AnnotationType.label].items]
    out = {}
    for item in ds:
        anns = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        h, w = anns[0].image.shape
        m = np.full((h, w), 255, np.uint8)
        for a in anns:
            m[a.image.astype(bool)] = a.label
        out[item.id] = (m, names)
    return out


@pytest.mark.integration
def test_datumaro_reads_every_mask_equal_to_predict(pred_dir, tmp_path):
    r = run_cli("export", str(pred_dir), "--format", "cvat", "--out", str(tmp_path / "cvat"))
    assert r.returncode == 0, r.stderr
    want, names = masks(pred_dir), classes(pred_dir)
    # labelmap: our classes in index order, in the masks' palette colours
    lines = [l for l in (tmp_path / "cvat/labelmap.txt").read_text().splitlines() if not l.startswith("#")]
    pal = palette(pred_dir)
    assert lines == [f"{n}:{pal[i][0]},{pal[i][1]},{pal[i][2]}::" for i, n in enumerate(names)]
    assert sorted((tmp_path / "cvat/ImageSets/Segmentation/default.txt").read_text().split()) == sorted(want)
    with zipfile.ZipFile(tmp_path / "cvat/cvat.zip") as z:
        z.extractall(tmp_path / "unzipped")
    for root in (tmp_path / "cvat", tmp_path / "unzipped"):
        got = _datumaro_masks(root)
        assert sorted(got) == sorted(want)
        for k, (m, dm_names) in got.items():
            assert dm_names == names
            assert np.array_equal(m, want[k]), k


def test_corrections_read_back_exactly_the_edited_masks(pred_dir, tmp_path):
    export(pred_dir, "cvat", tmp_path / "cvat")
    names, want, pal = classes(pred_dir), masks(pred_dir), palette(pred_dir)
    car = names.index("car")
    expected = {k: v.copy() for k, v in want.items()}
    # a person repaints a rectangle as 'car' in CVAT: the colour mask gets car's colour there
    key = sorted(want)[0]
    p = tmp_path / f"cvat/SegmentationClass/{key}.png"
    rgb = np.array(Image.open(p).convert("RGB"))
    rgb[100:180, 50:220] = pal[car]
    Image.fromarray(rgb).save(p)
    expected[key][100:180, 50:220] = car
    # and rebuilds the zip with the edited mask
    zsrc = tmp_path / "cvat/cvat.zip"
    with zipfile.ZipFile(zsrc) as zin, zipfile.ZipFile(tmp_path / "edited.zip", "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, p.read_bytes() if n == f"SegmentationClass/{key}.png" else zin.read(n))
    (tmp_path / "cvat/cvat.zip").unlink()
    photos = pred_dir.parent / "photos"
    for src in (tmp_path / "cvat", tmp_path / "edited.zip"):
        assert detect_layout(src) == "cvat"
        corr = open_corrections(src)
        assert corr.class_names == names
        got = {k: load() for k, _, load in corr.items()}
        assert sorted(got) == sorted(expected)
        for k in expected:
            assert np.array_equal(got[k], expected[k]), k
        # finetune's dataset, through the ordinary layout detection
        pairs, problems, coco = load_pairs(src, images=photos)
        assert problems == [] and len(pairs) == len(expected)
        ds = SegmentationDataset(pairs, coco=coco)
        for i, pair in enumerate(pairs):
            img, m = ds.load(i)
            assert np.array_equal(m, expected[pair.key])
        # evaluate --gt
        gt = GroundTruth(src)
        assert gt.layout == "cvat" and gt.class_names() == names
        for k in expected:
            assert np.array_equal(gt.load(k), expected[k])


def test_cvat_with_photos_is_not_taken_for_voc(pred_dir, tmp_path):
    """CVAT exports with images hold JPEGImages/ + SegmentationClass/ as VOC does; the colour masks must
    still be read through labelmap.txt (as VOC, the RGB masks would not decode to class indices)."""
    export(pred_dir, "cvat", tmp_path / "cvat")
    src = tmp_path / "cvat"
    shutil.copytree(pred_dir.parent / "photos", src / "JPEGImages")
    assert detect_layout(src) == "cvat" and detect_layout(pred_dir / "predictions.json") == "coco"
    want = masks(pred_dir)
    pairs, problems, corr = load_pairs(src)  # no --images: the photos in JPEGImages/
    assert problems == [] and sorted(p.key for p in pairs) == sorted(want)
    assert all(p.image.parent == src / "JPEGImages" for p in pairs)
    for p in pairs:
        assert np.array_equal(corr.mask(p.key), want[p.key])


def test_bad_cvat_files_name_the_file_and_field(pred_dir, tmp_path):
    export(pred_dir, "cvat", tmp_path / "cvat")
    lm = tmp_path / "cvat/labelmap.txt"
    good = lm.read_text()
    lm.write_text(good.replace("car:64,0,128::", "car:64,zero,128::"))
    with pytest.raises(InputError, match=r"labelmap.txt:\d+: field 'color_rgb'"):
        open_corrections(tmp_path / "cvat")
    lm.write_text(good)
    key = sorted(masks(pred_dir))[0]
    p = tmp_path / f"cvat/SegmentationClass/{key}.png"
    rgb = np.array(Image.open(p).convert("RGB"))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(p)
    corr = open_corrections(tmp_path / "cvat")
    with pytest.raises(InputError, match=rf"{key}.png: colour \(1,2,3\) is not in labelmap.txt"):
        corr.mask(key)
    # the CLI: one line, no traceback
    r = run_cli("evaluate", "--pred", str(pred_dir), "--gt", str(tmp_path / "cvat"), "--out", str(tmp_path / "rep"))
    assert "Traceback" not in r.stderr and "colour (1,2,3)" in r.stderr


def test_rerun_skips_overwrite_redoes_and_nothing_lands_outside_out(pred_dir, tmp_path):
    out = tmp_path / "work" / "cvat"
    before = set((tmp_path).rglob("*"))
    r1 = run_cli("export", str(pred_dir), "--format", "cvat", "--out", str(out))
    assert r1.returncode == 0 and "3 written, 0 already done" in r1.stderr
    created = set(tmp_path.rglob("*")) - before
    assert created and all(p == tmp_path / "work" or out in p.parents or p == out for p in created)
    assert not list(out.rglob("*.tmp"))
    r2 = run_cli("export", str(pred_dir), "--format", "cvat", "--out", str(out))
    assert "0 written, 3 already done" in r2.stderr
    r3 = run_cli("export", str(pred_dir), "--format", "cvat", "--out", str(out), "--overwrite")
    assert "3 written, 0 already done" in r3.stderr
    # another format into the same folder is refused, naming the way out
    r4 = run_cli("export", str(pred_dir), "--format", "labelme", "--out", str(out))
    assert r4.returncode == 2 and "holds a cvat export" in r4.stderr and "Traceback" not in r4.stderr
    # a symbolic link inside --out pointing elsewhere is not followed for writing
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(out / "SegmentationObject")
    (out / "SegmentationObject").symlink_to(outside, target_is_directory=True)
    r5 = run_cli("export", str(pred_dir), "--format", "cvat", "--out", str(out), "--overwrite")
    assert r5.returncode == 1 and "outside --out" in r5.stderr
    assert list(outside.iterdir()) == []


def test_only_exports_the_listed_images(pred_dir, tmp_path):
    keys = sorted(masks(pred_dir))
    lst = tmp_path / "next.txt"
    photo = pred_dir.parent / "photos" / f"{keys[1]}.png"
    lst.write_text(f"{photo}\n{keys[2]}\n")  # an input path and a relative name
    res, _, problems = export(pred_dir, "cvat", tmp_path / "cvat", only=lst)
    assert problems == [] and res.written == 2
    assert sorted(p.stem for p in (tmp_path / "cvat/SegmentationClass").glob("*.png")) == keys[1:]
    lst.write_text("nope.png\n")
    with pytest.raises(InputError, match="not among the predicted images"):
        export(pred_dir, "cvat", tmp_path / "cvat2", only=lst)


def test_a_second_only_run_adds_to_the_export(pred_dir, tmp_path):
    keys = sorted(masks(pred_dir))
    for i, k in enumerate(keys[:2]):
        (tmp_path / f"l{i}.txt").write_text(f"{k}\n")
        res, _, _ = export(pred_dir, "cvat", tmp_path / "cvat", only=tmp_path / f"l{i}.txt")
        assert res.written == 1
    assert (tmp_path / "cvat/ImageSets/Segmentation/default.txt").read_text().split() == keys[:2]
    with zipfile.ZipFile(tmp_path / "cvat/cvat.zip") as z:
        assert sorted(n for n in z.namelist() if n.startswith("SegmentationClass/")) == \
            [f"SegmentationClass/{k}.png" for k in keys[:2]]


def test_cvat_reexport_background_is_unlabelled_not_a_class(pred_dir, tmp_path):
    """CVAT's exporter puts 'background:0,0,0' first when the project has no such label and paints
    unannotated pixels black (cvat/apps/dataset_manager/formats/utils.py make_colormap)."""
    export(pred_dir, "cvat", tmp_path / "cvat")
    src = tmp_path / "cvat"
    (src / EXPORT_MARKER).unlink()
    lm = src / "labelmap.txt"
    lines = lm.read_text().splitlines()
    lm.write_text("\n".join([lines[0], "background:0,0,0::", *lines[1:]]) + "\n")
    names, want = classes(pred_dir), masks(pred_dir)
    key = sorted(want)[0]
    p = src / f"SegmentationClass/{key}.png"
    rgb = np.array(Image.open(p).convert("RGB"))
    rgb[10:30, 10:50] = 0  # a region nobody annotated
    Image.fromarray(rgb).save(p)
    expected = want[key].copy()
    expected[10:30, 10:50] = 255
    corr = open_corrections(src)
    assert corr.class_names == names
    assert corr.problems == [] and any("black 'background' is CVAT's colour" in s for s in corr.notes)
    assert np.array_equal(corr.mask(key), expected)
    with zipfile.ZipFile(src / "cvat.zip") as zin, zipfile.ZipFile(tmp_path / "from-cvat.zip", "w") as zout:
        for n in zin.namelist():
            if n == EXPORT_MARKER:
                continue
            zout.writestr(n, lm.read_bytes() if n == "labelmap.txt" else p.read_bytes() if n == f"SegmentationClass/{key}.png" else zin.read(n))
    corr = open_corrections(tmp_path / "from-cvat.zip")
    assert corr.class_names == names and np.array_equal(corr.mask(key), expected)
    # with our manifest in the zip (our export of a model whose class 0 is 'background'), read as written
    with zipfile.ZipFile(tmp_path / "from-cvat.zip") as zin, zipfile.ZipFile(tmp_path / "ours.zip", "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, zin.read(n))
        zout.writestr(EXPORT_MARKER, '{"format": "cvat"}')
    corr = open_corrections(tmp_path / "ours.zip")
    shifted = np.where(expected == 255, 0, expected + 1)
    assert corr.notes == [] and corr.class_names == ["background", *names]
    assert np.array_equal(corr.mask(key), shifted)
