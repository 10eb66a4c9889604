"""Export's handling of damaged predict folders, moved photos and list files."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
from pathlib import Path

import pytest

from fcn_label.export import export
from fcn_label.errors import InputError

from support.export_folder import masks, run_cli


def _store_lines(pred: Path) -> list[str]:
    """The record lines of predict's record store (.fcn-label/records/*.jsonl), in segment order."""
    return [l for seg in sorted((pred / ".fcn-label/records").glob("*.jsonl"))
            for l in seg.read_text(encoding="utf-8").splitlines()]


def _write_store(pred: Path, lines: list[str]) -> None:
    segs = sorted((pred / ".fcn-label/records").glob("*.jsonl"))
    for seg in segs[1:]:
        seg.unlink()
    segs[0].write_text("".join(l + "\n" for l in lines), encoding="utf-8")


def test_damaged_records_are_one_line_each_and_the_rest_is_exported(pred_copy, tmp_path):
    keys = sorted(masks(pred_copy))
    lines = _store_lines(pred_copy)
    for i, line in enumerate(lines):
        r = json.loads(line)
        if r["file_name"] == f"{keys[0]}.png":
            lines[i] = "{broken"
        elif r["file_name"] == f"{keys[1]}.png":
            del r["width"]
            lines[i] = json.dumps(r)
    _write_store(pred_copy, lines)
    res = run_cli("export", str(pred_copy), "--format", "cvat", "--out", str(tmp_path / "cvat"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert any(".jsonl:" in l and ": malformed JSON" in l for l in lines)
    assert any(f".jsonl:" in l and f"({keys[1]}): field 'width'" in l for l in lines)
    assert "1 written" in lines[-1]
    assert [p.stem for p in (tmp_path / "cvat/SegmentationClass").glob("*.png")] == [keys[2]]


def test_bad_categories_is_one_line_naming_the_field(pred_copy, tmp_path):
    pj = pred_copy / "predictions.json"
    d = json.loads(pj.read_text())
    d["categories"] = [{"name": "x"}]
    pj.write_text(json.dumps(d))
    r = run_cli("export", str(pred_copy), "--format", "labelme", "--out", str(tmp_path / "lm"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "predictions.json: field 'categories'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("export", str(tmp_path), "--format", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and all(f in r.stderr for f in ("cvat", "labelstudio", "labelme")) and "nope" in r.stderr
    r = run_cli("export", str(tmp_path), "--format", "cvat", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "give the --out folder of `fcn-label predict`" in r.stderr
    assert not (tmp_path / "x").exists()


def test_moved_photos_are_found_with_images(pred_dir, tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("label_studio_sdk")
    moved = tmp_path / "archive" / "photos"
    shutil.copytree(pred_dir.parent / "photos", moved)
    keys = sorted(masks(pred_dir))
    export(pred_dir, "labelme", tmp_path / "lm", images=moved)
    for k in keys:
        doc = json.loads((tmp_path / f"lm/{k}.json").read_text())
        assert (tmp_path / "lm" / doc["imagePath"]).resolve() == (moved / f"{k}.png").resolve()
    export(pred_dir, "labelstudio", tmp_path / "ls", images=moved)
    tasks = json.loads((tmp_path / "ls/tasks.json").read_text())
    for t in tasks:
        url = t["data"]["image"]
        assert url.startswith("/data/local-files/?d=")
        assert urllib.parse.unquote(url.split("?d=", 1)[1]) == f"{t['data']['fcn_label_key']}.png"
    with pytest.raises(InputError, match="--images .*: folder not found"):
        export(pred_dir, "labelme", tmp_path / "lm2", images=tmp_path / "nowhere")
    (moved / f"{keys[0]}.png").unlink()
    res, _, _ = export(pred_dir, "labelme", tmp_path / "lm3", images=moved)
    assert res.written == 2 and len(res.failed) == 1 and f"no image {keys[0]}.*" in res.failed[0][1]


def test_out_inside_the_predict_folder_is_refused(pred_dir, tmp_path):
    with pytest.raises(InputError, match="inside the predict folder"):
        export(pred_dir, "cvat", pred_dir / "cvat")
    assert not (pred_dir / "cvat").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="not empty and not an fcn-label export"):
        export(pred_dir, "cvat", tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mine.txt"]


def test_photos_gone_is_a_note_not_silence(pred_copy, tmp_path):
    pytest.importorskip("cv2")
    lines = []
    for line in _store_lines(pred_copy):  # as if the photos had moved away
        r = json.loads(line)
        r["path"] = str(tmp_path / "gone" / Path(r["path"]).name)
        lines.append(json.dumps(r))
    _write_store(pred_copy, lines)
    r = run_cli("export", str(pred_copy), "--format", "labelme", "--out", str(tmp_path / "lm"))
    assert r.returncode == 0
    assert r.stderr.count("not found; imagePath points where predict read it") == 3


@pytest.mark.parametrize("fmt, module", [("labelme", "cv2"), ("labelstudio", "label_studio_sdk.converter.brush")])
def test_missing_extra_is_one_line_naming_it(fmt, module, pred_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    r = run_cli("export", str(pred_dir), "--format", fmt, "--out", str(tmp_path / fmt))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert 'pip install "fcn-label[export]"' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / fmt).exists()  # checked before anything is written
