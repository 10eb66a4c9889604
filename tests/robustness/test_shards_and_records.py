"""Sharded predict jobs on one --out report every image and every failure; damaged records are redone."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from fcn_label.checkpoint import save_checkpoint
from support.helpers import make_checkpoint, rand_image


def _cmd(inp: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fcn_label", "predict", str(inp), "--out", str(out), "-w", str(model), "--quiet",
            *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _folder(root: Path) -> tuple[Path, Path, list[str], list[str]]:
    """10 images, sorted a0..a9; bad ones at 1, 7 (shard 1 of 2) and 2, 8 (shard 0 of 2)."""
    inp = root / "in"
    inp.mkdir()
    good, bad = [], []
    for k in range(10):
        p = inp / f"a{k}.png"
        if k in (1, 7):
            buf = io.BytesIO()
            Image.fromarray(rand_image(24, 32, k)).save(buf, format="PNG")
            p.write_bytes(buf.getvalue()[:80])  # truncated
            bad.append(p.name)
        elif k in (2, 8):
            p.write_bytes(b"not an image")
            bad.append(p.name)
        else:
            Image.fromarray(rand_image(24, 32, k)).save(p)
            good.append(p.name)
    model = root / "model.pt"
    save_checkpoint(make_checkpoint(), model)
    return inp, model, good, bad


def _check_reports(out: Path, good: list[str], bad: list[str]) -> None:
    rows = _rows(out / "predictions.csv")
    assert sorted(Path(r["path"]).name for r in rows) == sorted(good)
    fails = _rows(out / "failures.csv")
    assert sorted(Path(r["path"]).name for r in fails) == sorted(bad)
    for r in fails:
        assert Path(r["path"]).name in r["reason"]
    coco = json.loads((out / "predictions.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(good)
    # every image's RLEs, decoded by pycocotools, rebuild its mask PNG exactly
    by_id = {im["id"]: im for im in coco["images"]}
    for image_id, im in by_id.items():
        mask = np.asarray(Image.open(out / im["file_name"]))
        rebuilt = np.full(mask.shape, -1)
        for a in coco["annotations"]:
            if a["image_id"] == image_id:
                rebuilt[mask_utils.decode(a["segmentation"]).astype(bool)] = a["category_id"] - 1
        assert np.array_equal(rebuilt, mask), im["file_name"]


def test_two_shards_on_one_out_report_every_image_and_failure(tmp_path):
    inp, model, good, bad = _folder(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen(_cmd(inp, out, model, "--shard", f"{i}/2"), stderr=subprocess.PIPE, text=True, env=env)
             for i in (0, 1)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errs
    assert all("Traceback" not in e for e in errs)
    _check_reports(out, good, bad)

    # shard 0's bad file is fixed and only shard 0 re-runs: its failure goes, shard 1's stay
    Image.fromarray(rand_image(24, 32, 99)).save(inp / "a2.png")
    p = subprocess.run(_cmd(inp, out, model, "--shard", "0/2"), capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr
    _check_reports(out, good + ["a2.png"], [b for b in bad if b != "a2.png"])


def test_a_damaged_record_is_predicted_again(tmp_path):
    inp, model, good, bad = _folder(tmp_path)
    out = tmp_path / "out"
    assert subprocess.run(_cmd(inp, out, model), capture_output=True, timeout=300).returncode == 1
    # one segment per writing process (several with encoding processes): damage the one holding a3's line
    (seg,) = [s for s in (out / ".fcn-label" / "records").glob("*.jsonl") if b'"a3.png"' in s.read_bytes()]
    lines = seg.read_bytes().splitlines(keepends=True)
    damaged = [b'{"path": 1, "classes": []}\n' if json.loads(l)["file_name"] == "a3.png" else l for l in lines]
    seg.write_bytes(b"".join(damaged))  # a3's line: valid JSON, not a record
    p = subprocess.run(_cmd(inp, out, model), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "done 1, skipped 5" in p.stderr  # redone at once: the scan checks every line
    _check_reports(out, good, bad)
    p = subprocess.run(_cmd(inp, out, model), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "done 0, skipped 6" in p.stderr, p.stderr
    _check_reports(out, good, bad)
