"""The CVAT auto-annotation function against cvat-sdk's own types, with `fcn-label predict` as the reference.

No CVAT server here (it needs Docker): the spec is validated by cvat-sdk's DetectionFunctionSpec and
the shapes by its driver's annotation mapper (what annotate_task and the agent run on every frame);
cvat-cli's own parser and function loader build the function from `-p` parameters; and the real
`cvat-cli task auto-annotate` runs end to end against a stand-in for the endpoints it calls
(tests/support/fake_cvat.py). The masks are decoded with cvat_sdk.masks.decode_mask and compared with the masks
the real `fcn-label predict` CLI wrote for the same files; polygons are rasterised the way LabelMe does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

cvat_sdk = pytest.importorskip("cvat_sdk", reason='needs cvat-sdk: pip install "fcn-label[cvat]"')
pytest.importorskip("cv2", reason='the polygon path needs OpenCV: pip install "fcn-label[export]"')

import cvat_sdk.auto_annotation as cvataa  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from fcn_label.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data"  # as tests/conftest.py
MODULE = "fcn_label.integrations.cvat"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fcn_label", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> tuple[Path, Path]:
    """The repo's example frames, a greyscale and a palette copy, an EXIF-rotated JPEG and (when the shared
    fixtures are here) two COCO photos, predicted by the real CLI with the shipped model (--probs for the
    confidence test)."""
    root = tmp_path_factory.mktemp("cvat")
    photos = root / "photos"
    photos.mkdir()
    examples = sorted((REPO / "examples").glob("*.png"))
    for p in examples:
        shutil.copy(p, photos / p.name)
    with Image.open(examples[0]) as im:
        im.convert("L").save(photos / "grey.png")
        im.convert("P", palette=Image.ADAPTIVE, colors=64).save(photos / "palette.png")
        small = im.convert("RGB").resize((200, 150))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: a viewer (and predict) turns it upright, 150x200
        small.save(photos / "rotated.jpg", quality=90, exif=exif)
    coco = SHARED / "fixtures" / "coco" / "images"
    for p in sorted(coco.glob("*.jpg"))[:2] if coco.is_dir() else []:
        shutil.copy(p, photos / p.name)
    r = _cli("predict", str(photos), "--out", str(root / "pred"), "--probs", "-q")
    assert r.returncode == 0, r.stderr
    return photos, root / "pred"


@pytest.fixture(scope="module")
def function():
    from fcn_label.integrations import cvat

    return cvat.create()


def _context(**kw) -> cvataa.DetectionFunctionContext:
    class Context(cvataa.DetectionFunctionContext):  # the interface's own abstract class, filled in
        frame_name = kw.get("frame_name", "frame.png")
        conf_threshold = kw.get("conf_threshold")
        conv_mask_to_poly = kw.get("conv_mask_to_poly", False)

    return Context()


def _reference(pred: Path, photo: Path) -> np.ndarray:
    with Image.open(pred / f"{photo.stem}.png") as im:  # predict's palette PNG: pixel value = class index
        assert im.mode == "P"
        return np.array(im)


def _classes(pred: Path) -> list[str]:
    cats = json.loads((pred / "predictions.json").read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def _mapper(spec, conv_mask_to_poly: bool, task_label_type: str = "any"):
    """cvat-sdk's driver-side checks (label ids, frame, id/source unset, mask vs polygon) for a task whose labels
    have the model's names; skipped if a later cvat-sdk reshapes this private part."""
    driver = pytest.importorskip("cvat_sdk.auto_annotation.driver")
    if not hasattr(driver, "_AnnotationMapper"):
        pytest.skip("cvat_sdk.auto_annotation.driver._AnnotationMapper not in this cvat-sdk")
    ds_labels = [types.SimpleNamespace(id=100 + i, name=l.name, type=task_label_type, sublabels=[], attributes=[])
                 for i, l in enumerate(spec.labels)]
    return driver._AnnotationMapper(logging.getLogger("test"), spec.labels, ds_labels,
                                    allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)


def test_spec_validates_with_cvat_sdk(function, predicted):
    _, pred = predicted
    names = _classes(pred)
    spec = function.spec
    assert isinstance(spec, cvataa.DetectionFunctionSpec)
    again = cvataa.DetectionFunctionSpec(labels=list(spec.labels))  # cvat-sdk's validator runs on construction
    assert [l.name for l in again.labels] == names
    assert [l.id for l in again.labels] == list(range(len(names)))
    assert {l.type for l in again.labels} == {"mask"}
    with pytest.raises(cvataa.BadFunctionError):  # the validator is live: a duplicate id is refused
        cvataa.DetectionFunctionSpec(labels=[*spec.labels, cvataa.label_spec("extra", 0, type="mask")])


def test_masks_decode_to_predicts_masks(function, predicted):
    photos, pred = predicted
    names = _classes(pred)
    mapper = _mapper(function.spec, conv_mask_to_poly=False)
    checked = 0
    for photo in sorted(photos.iterdir()):
        want = _reference(pred, photo)
        with Image.open(photo) as im:  # as CVAT's TaskDataset hands a frame over: PIL.Image.open, any mode
            shapes = function.detect(_context(frame_name=photo.name), im)
        h, w = want.shape
        got = np.full((h, w), 255, np.uint8)
        covered = np.zeros((h, w), np.int32)
        for s in shapes:
            assert s.type.value == "mask" and s.frame == 0
            m = decode_mask(s.points, image_width=w, image_height=h)
            got[m] = s.label_id
            covered += m
        assert covered.max() == 1 and covered.min() == 1, photo.name  # disjoint, and every pixel has a class
        assert np.array_equal(got, want), (photo.name, int((got != want).sum()))
        assert sorted(s.label_id for s in shapes) == sorted(np.unique(want).tolist())  # one shape per class present
        tags, remapped = mapper.validate_and_remap(shapes, ds_frame=7)  # cvat-sdk's checks pass
        assert tags == [] and len(remapped) == len(shapes)
        assert all(s.frame == 7 and s.source == "auto" and s.label_id >= 100 for s in remapped)
        checked += 1
    assert checked >= 6 and len(names) == len(function.spec.labels)


def _draw(shapes, h: int, w: int) -> np.ndarray:
    """LabelMe's rule (PIL polygon fill and outline), applied in CVAT's z_order: higher on top."""
    out = np.full((h, w), 255, np.uint8)
    for s in sorted(shapes, key=lambda s: s.z_order):
        assert s.type.value == "polygon" and len(s.points) >= 6 and len(s.points) % 2 == 0
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).polygon([(s.points[i], s.points[i + 1]) for i in range(0, len(s.points), 2)],
                                   outline=1, fill=1)
        out[np.array(im, bool)] = s.label_id
    return out


def test_polygons_agree_like_the_labelme_export(function, predicted, tmp_path):
    photos, pred = predicted
    names = _classes(pred)
    r = _cli("export", str(pred), "--format", "labelme", "--out", str(tmp_path / "lm"))
    assert r.returncode == 0, r.stderr
    mapper = _mapper(function.spec, conv_mask_to_poly=True)
    for photo in sorted(photos.iterdir()):
        want = _reference(pred, photo)
        with Image.open(photo) as im:
            shapes = function.detect(_context(conv_mask_to_poly=True), im)
        got = _draw(shapes, *want.shape)
        agree = (got == want).mean()
        assert agree >= 0.995, (photo.name, agree)
        for c in np.unique(want):  # label by label: each class's pixels come back as that class
            share = (got[want == c] == c).mean()
            assert share >= 0.9 or (want == c).sum() < 200, (photo.name, names[c], share)
        # the same polygons as the LabelMe export of predict's mask, in the same order
        doc = json.loads((tmp_path / "lm" / f"{photo.stem}.json").read_text())
        assert [(names[s.label_id], s.points) for s in sorted(shapes, key=lambda s: s.z_order)] == \
               [(d["label"], [v for p in d["points"] for v in p]) for d in doc["shapes"]]
        _, remapped = mapper.validate_and_remap(shapes, ds_frame=0)  # no mask slipped through
        assert len(remapped) == len(shapes)
    # and the driver refuses masks when it asked for polygons: the flag is what switches the output
    with Image.open(next(photos.glob("*.png"))) as im:
        masks = function.detect(_context(conv_mask_to_poly=False), im)
    with pytest.raises(cvataa.BadFunctionError, match="mask"):
        mapper.validate_and_remap(masks, ds_frame=0)


def test_confidence_threshold_leaves_out_unsure_pixels(function, predicted):
    photos, pred = predicted
    photo = photos / "0016E5_07959.png"
    want = _reference(pred, photo)
    with Image.open(pred / "confidence" / f"{photo.stem}.png") as im:
        conf8 = np.array(im).astype(np.int32)  # predict --probs: rint(confidence * 255)
    t = 0.8
    with Image.open(photo) as im:
        shapes = function.detect(_context(conf_threshold=t), im)
    h, w = want.shape
    got = np.full((h, w), 255, np.uint8)
    for s in shapes:
        got[decode_mask(s.points, image_width=w, image_height=h)] = s.label_id
    sure, unsure = conf8 >= round(t * 255) + 1, conf8 <= round(t * 255) - 1  # clear of 8-bit rounding
    assert unsure.sum() > 1000 and sure.sum() > 1000
    assert np.array_equal(got[sure], want[sure])
    assert (got[unsure] == 255).all()


def test_cvat_cli_loads_the_module_with_its_parameters(predicted, monkeypatch, tmp_path):
    """cvat-cli's own argument parser and FunctionLoader (task auto-annotate); only the server is replaced."""
    cli = pytest.importorskip("cvat_cli._internal.commands_all", reason="cvat-cli not installed (pip install cvat-cli)")
    import argparse

    photos, pred = predicted
    ck = tmp_path / "copy.pt"
    shutil.copy(REPO / "pretrained" / "fcn8s-compact-camvid.pt", ck)
    parser = argparse.ArgumentParser()
    cli.COMMANDS.configure_parser(parser)
    args = parser.parse_args(["task", "auto-annotate", "12", "--function-module", MODULE, "-p", f"weights=str:{ck}",
                              "-p", "device=str:cpu", "-p", "flip=bool:false", "--conv-mask-to-poly"])
    seen = {}

    def annotate_task(client, task_id, function, **kw):  # the server round trip, replaced
        seen.update(task=task_id, function=function, **kw)

    monkeypatch.setattr(cvataa, "annotate_task", annotate_task)
    kwargs = vars(args)
    executor = kwargs.pop("_executor")
    kwargs.pop("_needs_client", None)
    executor(object(), **kwargs)
    f = seen["function"]
    assert seen["task"] == 12 and seen["conv_mask_to_poly"] is True
    assert f.predictor.device.type == "cpu" and f.predictor.flip is False
    with Image.open(photos / "0016E5_07959.png") as im:
        shapes = f.detect(_context(), im)
    got = np.full(_reference(pred, photos / "0016E5_07959.png").shape, 255, np.uint8)
    for s in shapes:
        got[decode_mask(s.points, image_width=got.shape[1], image_height=got.shape[0])] = s.label_id
    assert np.array_equal(got, _reference(pred, photos / "0016E5_07959.png"))


def test_create_native_sends_the_models_labels(function):
    drv = pytest.importorskip("cvat_cli._internal.agent_driver_detection", reason="cvat-cli not installed")
    fields = drv.AgentDetectionFunctionDriver.get_remote_function_fields(function.spec)  # the POST /api/functions body
    assert fields == {"labels_v2": [{"name": n, "attributes": [], "type": "mask"} for n in function.classes]}


@pytest.mark.parametrize("params, says", [
    ({"weights": "no-such.pt"}, "no-such.pt: no such weights file or shipped model"),
    ({"wieghts": "x.pt"}, "-p wieghts: unknown parameter of fcn_label.integrations.cvat; known: weights=str:"),
    ({"tolerance": "half"}, "-p tolerance=half: not a number"),
    ({"tolerance": -1.0}, "-p tolerance=-1.0: must be >= 0"),
    ({"flip": "maybe"}, "-p flip=maybe: not a boolean"),
    ({"device": "tpu"}, "tpu"),
])
def test_bad_parameters_are_one_line(params, says):
    from fcn_label.integrations import cvat

    with pytest.raises(UserError) as e:
        cvat.from_parameters(**params)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_create_ends_with_one_line_for_cvat_cli(capsys):
    from fcn_label.integrations import cvat

    with pytest.raises(SystemExit) as e:
        cvat.create(weights="no-such.pt")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: no-such.pt: no such weights file") and err.count("\n") == 1


def _cvat_cli(fake, *args: str, home: Path) -> subprocess.CompletedProcess:
    """The real cvat-cli in its own process, talking to the stand-in server."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CVAT_ACCESS_TOKEN="token", HOME=str(home), XDG_CACHE_HOME=str(home / "cache"))
    return subprocess.run([sys.executable, "-m", "cvat_cli", "--server-host", fake.url, *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_cvat_cli_auto_annotate_uploads_predicts_masks(predicted, tmp_path):
    """`cvat-cli task auto-annotate --function-module fcn_label.integrations.cvat` end to end against a stand-in
    for the CVAT endpoints it calls (tests/support/fake_cvat.py): frames from an original-quality chunk,
    shapes uploaded; decoded from the upload's JSON, every frame's masks are predict's, and the polygons
    drawn as LabelMe draws them keep >= 99.5 %."""
    pytest.importorskip("cvat_cli", reason="cvat-cli not installed (pip install cvat-cli)")
    from support.fake_cvat import FakeCvat

    photos, pred = predicted
    names = _classes(pred)
    files = sorted(photos.iterdir())
    with FakeCvat(5, files, names) as fake:
        r = _cvat_cli(fake, "task", "auto-annotate", "5", "--function-module", MODULE, "-p", "device=str:cpu",
                      "--clear-existing", home=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        r = _cvat_cli(fake, "task", "auto-annotate", "5", "--function-module", MODULE, "-p", "device=str:cpu",
                      "--conv-mask-to-poly", home=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    assert [q.split("?")[0] for q in fake.requests if not q.startswith("GET")] == \
           ["PUT /api/tasks/5/annotations", "PATCH /api/tasks/5/annotations"]  # replace, then add
    masks_up, polys_up = fake.uploads
    for f, photo in enumerate(files):
        want = _reference(pred, photo)
        h, w = want.shape
        got = np.full((h, w), 255, np.uint8)
        for s in (s for s in masks_up["shapes"] if s["frame"] == f):
            assert s["type"] == "mask" and s["source"] == "auto"
            got[decode_mask(s["points"], image_width=w, image_height=h)] = s["label_id"] - 100  # the task's label ids
        assert np.array_equal(got, want), photo.name
        drawn = _draw([types.SimpleNamespace(type=types.SimpleNamespace(value=s["type"]), points=s["points"],
                                             z_order=s.get("z_order", 0), label_id=s["label_id"] - 100)
                       for s in polys_up["shapes"] if s["frame"] == f], h, w)
        assert (drawn == want).mean() >= 0.995, photo.name


@pytest.mark.integration
def test_cvat_cli_label_mismatch_and_bad_parameter(predicted, tmp_path):
    pytest.importorskip("cvat_cli", reason="cvat-cli not installed (pip install cvat-cli)")
    from support.fake_cvat import FakeCvat

    photos, pred = predicted
    names = [n for n in _classes(pred) if n != "pole"]
    files = sorted(photos.glob("0016E5_*.png"))[:1]
    with FakeCvat(6, files, names) as fake:
        r = _cvat_cli(fake, "task", "auto-annotate", "6", "--function-module", MODULE, "-p", "device=str:cpu",
                      home=tmp_path)
        assert r.returncode != 0 and "label 'pole' is not in dataset" in r.stderr  # CVAT's driver refuses
        r = _cvat_cli(fake, "task", "auto-annotate", "6", "--function-module", MODULE, "-p", "device=str:cpu",
                      "--allow-unmatched-labels", home=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        r = _cvat_cli(fake, "task", "auto-annotate", "6", "--function-module", MODULE, "-p", "wieghts=str:x.pt",
                      home=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.strip().splitlines()[-1].startswith(
            "error: -p wieghts: unknown parameter of fcn_label.integrations.cvat; known: weights=str:...")
    (up,) = fake.uploads
    want = _reference(pred, files[0])
    assert (want == _classes(pred).index("pole")).any()  # the model did see poles: they were dropped
    assert sorted({s["label_id"] - 100 for s in up["shapes"]}) == \
           sorted({names.index(_classes(pred)[c]) for c in np.unique(want) if _classes(pred)[c] != "pole"})
