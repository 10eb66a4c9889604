"""benchmarks/active_loop.py end to end in a smoke configuration (slow: a few tiny trainings)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_active_loop_smoke(camvid, tmp_path):
    out = tmp_path / "al"
    cmd = [sys.executable, str(REPO / "benchmarks" / "active_loop.py"), "--data", str(camvid), "--out", str(out),
           "--size", "90x120", "--pool", "24", "--start", "6", "--step", "6", "--rounds", "2", "--epochs", "1",
           "--initial-epochs", "1", "--val-images", "4", "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    res = pd.read_csv(out / "results.csv")
    assert sorted(zip(res["strategy"], res["labelled"])) == sorted(
        (s, n) for s in ("uncertainty", "random") for n in (6, 12, 18))
    assert res["val_mean_iou"].between(0, 1).all()
    r0 = res[res["round"] == 0]["val_mean_iou"]
    assert r0.nunique() == 1  # both curves start from the same round-0 model
    val = {l.split()[0] for l in (out / "val.txt").read_text().splitlines()}
    for s in ("uncertainty", "random"):
        prev = set((out / "round0.txt").read_text().splitlines())
        for r in (1, 2):
            now = (out / s / f"round{r}" / "labelled.txt").read_text().splitlines()
            assert len(now) == len(set(now)) == len(prev) + 6 and prev <= set(now)
            assert not {l.split()[0] for l in now} & val
            prev = set(now)
    # the uncertainty rounds took the least confident of the predicted pool
    pred = pd.read_csv(out / "uncertainty" / "round1" / "pred" / "predictions.csv")
    added = set((out / "uncertainty" / "round1" / "labelled.txt").read_text().splitlines()) - set(
        (out / "round0.txt").read_text().splitlines())
    added_images = {l.split()[0] for l in added}
    conf = {}
    for m, p in zip(pred["mask"], pred["path"]):
        conf[p] = np.array(Image.open(out / "uncertainty" / "round1" / "pred" / "confidence" / m), float).mean()
    lowest = sorted(conf, key=lambda p: (conf[p], p))[:6]
    assert added_images == set(lowest)
