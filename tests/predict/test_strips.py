"""Extreme strips: a thin image is tiled with few tiles of the same pixel budget, and an absurdly thin one
(4 x 1,000,000, which cost 33-78 s through ~1,300 square tiles) is refused at once with one line."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fcn_label.checkpoint import save_checkpoint
from fcn_label.cli import run_cli
from fcn_label.predict import Predictor
from support.helpers import make_checkpoint, rand_image


def slide_reference(pred, img, th, tw, overlap):
    """Plain slide inference with full-size accumulators and (th, tw) windows, written out here."""
    H, W = img.shape[:2]

    def starts(n, t):
        s = int(t * (1 - overlap))
        return sorted({min(v, n - t) for v in range(0, n - t + s, s)}) if n > t else [0]

    acc, cnt = torch.zeros(pred.num_classes, H, W), torch.zeros(H, W)
    for y in starts(H, th):
        for x in starts(W, tw):
            t = np.ascontiguousarray(img[y:y + th, x:x + tw])
            acc[:, y:y + t.shape[0], x:x + t.shape[1]] += pred.forward(pred.preprocess([t]))[0]
            cnt[y:y + t.shape[0], x:x + t.shape[1]] += 1
    assert cnt.min() >= 1
    return (acc / cnt).argmax(0).numpy()


def test_a_thin_strip_runs_as_few_wide_tiles_and_equals_the_plain_slide(monkeypatch):
    ck = make_checkpoint("same")
    pred = Predictor(ck, device="cpu", tile=64, tile_overlap=0.25)
    img = rand_image(8, 4000, 5)  # 1:500, within the limit
    calls = []
    forward = pred.forward
    monkeypatch.setattr(pred, "forward", lambda x: calls.append(tuple(x.shape[-2:])) or forward(x))
    out = pred.predict_arrays([img])[0]
    # the budget of one 64 x 64 tile as 8 x 512 windows, stride 384: ceil((4000 - 512) / 384) + 1 of them,
    # where square 64-tiles would take ceil((4000 - 64) / 48) + 1 = 83
    assert set(calls) == {(8, 512)} and len(calls) == math.ceil((4000 - 512) / 384) + 1
    monkeypatch.undo()
    assert (out.labels == slide_reference(pred, img, 8, 512, 0.25)).all()


def test_a_tall_strip_is_tiled_the_same_way_turned():
    ck = make_checkpoint("same")
    pred = Predictor(ck, device="cpu", tile=64, tile_overlap=0.25)
    img = rand_image(3000, 16, 2)
    assert pred.tile_grid(3000, 16)[0] == (256, 16)
    assert (pred.predict_arrays([img])[0].labels == slide_reference(pred, img, 256, 16, 0.25)).all()


def test_a_4_by_1000000_image_is_refused_in_seconds_and_the_rest_labelled(tmp_path, capsys):
    model = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint("same"), model)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rand_image(40, 48, 0)).save(src / "good.png")
    Image.fromarray(np.full((4, 1_000_000, 3), 90, np.uint8)).save(src / "strip.png")
    t = time.perf_counter()
    try:
        run_cli(["predict", str(src), "--out", str(tmp_path / "out"), "-w", str(model), "-q"])
        code = 0
    except SystemExit as e:
        code = e.code
    seconds = time.perf_counter() - t
    assert code == 1 and "Traceback" not in capsys.readouterr().err
    assert seconds < 15, seconds  # was 33-78 s; generous for a shared 2-core CPU
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "strip.png").exists()
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["path"]) == [str(src / "strip.png")]
    assert "1000000x4 pixels is thinner than 1:1000" in failures["reason"][0]
