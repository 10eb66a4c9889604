"""Helpers for the export tests: independent readers of predict's outputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (saves a torch import per call); stdout/stderr captured, exit status kept."""
    import contextlib
    import io

    from fcn_label.cli import run_cli as _run

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _run(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["fcn-label", *args], code, out.getvalue(), err.getvalue())


def predict(images: Path, out: Path) -> Path:
    """``fcn-label predict IMAGES --out OUT`` with the shipped model, asserted to succeed."""
    r = run_cli("predict", str(images), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def masks(pred: Path) -> dict[str, np.ndarray]:
    """Predict's masks, read with PIL directly (palette PNG: pixel value = class index)."""
    out = {}
    for p in sorted(pred.rglob("*.png")):
        rel = p.relative_to(pred)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("overlays", "confidence"):
            continue
        with Image.open(p) as im:
            assert im.mode == "P"
            out[rel.with_suffix("").as_posix()] = np.array(im)
    assert out, f"no masks in {pred}"
    return out


def classes(pred: Path) -> list[str]:
    cats = json.loads((pred / "predictions.json").read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def palette(pred: Path) -> list[tuple[int, int, int]]:
    with Image.open(next(p for p in pred.rglob("*.png") if ".fcn-label" not in p.parts)) as im:
        pal = im.getpalette()
    return [tuple(pal[i:i + 3]) for i in range(0, len(pal), 3)]


def open_corrections(path, layout: str | None = None):
    """A corrections file or folder read by the layout detection picks (as finetune and evaluate do), or by ``layout``."""
    import importlib

    from fcn_label.datasets import layout_module

    module = importlib.import_module(f"fcn_label.datasets.{layout}") if layout else layout_module(Path(path))
    return module.read(Path(path))


def fill(doc: dict, names: list[str]) -> np.ndarray:
    """LabelMe's own rule (labelme.utils.shape_to_mask: PIL polygon, outline and fill), shapes in file order.

    The labelme package itself is not importable here (its __init__ needs Qt and onnxruntime), so
    this is a separate, plain re-statement of that rule.
    """
    h, w = doc["imageHeight"], doc["imageWidth"]
    out = np.full((h, w), 255, np.uint8)
    for s in doc["shapes"]:
        assert s["shape_type"] == "polygon" and len(s["points"]) >= 3
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).polygon([tuple(p) for p in s["points"]], outline=1, fill=1)
        out[np.array(im, bool)] = names.index(s["label"])
    return out
