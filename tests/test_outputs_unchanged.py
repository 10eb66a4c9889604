"""Every file the verbs write stays byte-identical to what the code before the 0.2.0 restructuring wrote.

The reference is not a stored hash: the test extracts the package as it stood at BASE (the last
commit before the prediction folder got one owner and predict was cut into parts) with
``git archive``, runs the same commands with that code and with the working tree's, on this
machine, and compares every output file. So float kernels that differ between CPUs cannot make
it flaky, and a change of any output byte in predict, evaluate, export, review or select fails it.

Deliberate changes are named here and nowhere else: the per-image timing column of
predictions.csv (a wall-clock figure), the format-version file that 0.2.0 adds, and failures.csv,
whose schema 0.2.0 unified across verbs (its own tests pin the new shape).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parent.parent
BASE = "d74edb7"  # main before issue 21 (the cut)
TIMING_COLUMNS = {"seconds", "time", "ms", "time_ms", "predict_ms", "elapsed"}
NEW_OR_RESHAPED = {"failures.csv"}


def _base_tree(dest: Path) -> Path:
    """The package at BASE, or a skip saying why it cannot be had (a shallow clone, no git)."""
    if shutil.which("git") is None:
        pytest.skip("git not installed: cannot extract the base commit")
    probe = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BASE}^{{commit}}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"commit {BASE} not in this clone (shallow?): fetch full history to run the before/after check")
    blob = subprocess.run(["git", "-C", str(REPO), "archive", BASE, "fcn_label"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _inputs(root: Path) -> tuple[Path, Path, Path]:
    """The shipped model's example frames at several sizes and formats, ground truth with an ignore
    region, and the shipped checkpoint: real predictions with several classes and real confidence."""
    imgs, gt = root / "imgs", root / "gt"
    (imgs / "sub").mkdir(parents=True)
    gt.mkdir()
    frames = sorted((REPO / "examples").glob("*.png"))
    variants = [(frames[0], 1.0, "png"), (frames[1], 0.5, "jpg"), (frames[2], 0.37, "png"),
                (frames[0], 0.21, "sub/png"), (frames[1], 0.8, "png")]
    for k, (src, scale, kind) in enumerate(variants):
        img = Image.open(src).convert("RGB")
        img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.BILINEAR)
        folder = imgs / "sub" if kind.startswith("sub/") else imgs
        img.save(folder / f"im{k}.{kind.split('/')[-1]}", **({"quality": 90} if kind == "jpg" else {}))
        m = np.random.default_rng(100 + k).integers(0, 11, (img.height, img.width)).astype(np.uint8)
        m[: img.height // 4] = 11
        Image.fromarray(m).save(gt / f"im{k}.png")
    (imgs / "notes.txt").write_text("not an image")
    ck = root / "shipped.pt"
    shutil.copy(REPO / "pretrained" / "fcn8s-compact-camvid.pt", ck)
    return imgs, gt, ck


def _run_all(tree: Path, imgs: Path, gt: Path, ck: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree), FCN_LABEL_NO_COLOR="1", COLUMNS="200")

    def cli(*args: str) -> None:
        p = subprocess.run([sys.executable, "-m", "fcn_label", *args], env=env, capture_output=True, text=True,
                           cwd=out, timeout=300)
        assert p.returncode in (0, 1), f"{tree.name}: fcn-label {' '.join(args)} -> {p.returncode}\n{p.stderr[-2000:]}"

    pred = out / "pred"
    cli("predict", str(imgs), "--out", str(pred), "-w", str(ck), "--overlay", "--probs", "--gt", str(gt), "--ignore-index", "11", "-q")
    cli("evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(out / "eval"), "--ignore-index", "11", "-q")
    for fmt in ("cvat", "labelstudio", "labelme"):
        cli("export", str(pred), "--format", fmt, "--out", str(out / f"export-{fmt}"))
    cli("review", str(pred), "--out", str(out / "review"), "--gt", str(gt), "--ignore-index", "11", "-q")
    for strategy in ("uncertainty", "diverse"):
        cli("select", str(pred), "--k", "3", "--strategy", strategy, "--out", str(out / f"select-{strategy}.txt"))


def _normalised(path: Path, root: Path) -> bytes:
    """The file's bytes; zips as their members, CSVs without their timing columns, and the run's own folder replaced by a token."""
    if path.suffix == ".zip":  # members' bytes; the archive itself carries the files' mtimes
        with zipfile.ZipFile(path) as z:
            data = b"".join(n.encode() + b"\0" + z.read(n) for n in sorted(z.namelist()))
        return data.replace(str(root).encode(), b"<ROOT>")
    data = path.read_bytes().replace(str(root).encode(), b"<ROOT>")
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        if rows:
            keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
            data = "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rows).encode()
    return data


def _records(root: Path) -> list[dict]:
    """Every per-image record in the store, whatever its segment files are named (they carry a clock
    and a process id), sorted by input path and without the wall-clock field."""
    rows = []
    for seg in sorted((root / "pred" / ".fcn-label").rglob("*.jsonl")):
        rows += [json.loads(line) for line in seg.read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("seconds", None)
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def _files(root: Path) -> dict[str, bytes]:
    """Every output file but the store's own internals (compared by content in _records)."""
    return {str(p.relative_to(root)): _normalised(p, root) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in NEW_OR_RESHAPED and ".fcn-label" not in p.parts}


@pytest.mark.integration
def test_every_output_byte_matches_the_base_commit(tmp_path):
    base = _base_tree(tmp_path / "base")
    imgs, gt, ck = _inputs(tmp_path / "in")
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    _run_all(base, imgs, gt, ck, before)
    _run_all(REPO, imgs, gt, ck, after)
    old = _files(before)
    new = {k: v for k, v in _files(after).items() if k in old or not k.startswith("pred/")}
    # the outputs exist at all: masks for the five images and the reports of every verb
    assert sum(k.startswith("pred/im") and k.endswith(".png") for k in old) + ("pred/sub/im3.png" in old) == 5
    assert any(k.startswith("eval/") for k in old) and any(k.startswith("review/") for k in old)
    assert sorted(old) == sorted(new), set(old) ^ set(new)
    changed = [k for k in old if old[k] != new[k]]
    assert not changed, f"outputs differ from {BASE}'s: {changed}"
    old_records, new_records = _records(before), _records(after)
    assert len(old_records) >= 4 and old_records == new_records
