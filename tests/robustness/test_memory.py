"""Bounded memory: what keeps predict's peak independent of the number and size of images.

The mechanisms are tested here on tiny inputs; ``benchmarks/memory.py`` measures the
resulting peaks on a 12000x9000 photo and 200 mixed images (the slow test runs a
smaller version of it and checks the documented bound).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcn_label.predict.pipeline as job_mod  # the loop the job runs
import fcn_label.predict.predictor as predict_mod
from fcn_label.predict import Item, PredictJob, PredictOptions, discover
from fcn_label.predict.decoding import DecodeDataset
from fcn_label.predict import Predictor
from support.helpers import make_checkpoint, one_at_a_time, rand_image

REPO = Path(__file__).resolve().parents[2]


def test_workers_hand_large_images_to_the_main_process(tmp_path):
    """A worker only reads a large image's header; its pixels never wait in the prefetch queue."""
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(rand_image(10, 10, 0)).save(small)
    Image.fromarray(rand_image(40, 50, 1)).save(large)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    ds = DecodeDataset([Item(small, "small"), Item(large, "large"), Item(tmp_path / "bad.png", "bad")], 10**9,
                 worker_max_pixels=1000)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=lambda b: b[0], num_workers=1)
    got = {i: (arr, err) for i, arr, err in loader}
    assert got[0][0].shape == (10, 10, 3) and got[0][1] is None
    assert got[1] == (None, None)  # handed over
    assert got[2][0] is None and "not a recognised image format" in got[2][1]  # header errors still reported
    assert ds.decode(1)[1].shape == (40, 50, 3)


def test_job_decodes_handed_over_images_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(job_mod, "WORKER_MAX_PIXELS", 1000)
    ck = make_checkpoint()
    for i, (h, w) in enumerate([(40, 50), (10, 10), (30, 40)]):
        Image.fromarray(rand_image(h, w, i)).save(tmp_path / f"im{i}.png")
    items, _ = discover([tmp_path], tmp_path / "out")
    res = PredictJob(Predictor(ck, device="cpu"), PredictOptions(out=tmp_path / "out", workers=1, procs=1)).run(items)
    assert res.done == 3 and not res.failed
    for i in range(3):
        ref = one_at_a_time(ck, np.asarray(Image.open(tmp_path / f"im{i}.png")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"im{i}.png")), ref)


def test_free_heap_pages_are_handed_back_as_the_job_goes(tmp_path, monkeypatch):
    """The allocator is asked to return freed pages after every TRIM_EVERY_PIXELS predicted (here 1000)."""
    real = job_mod.release_free_memory
    real()  # the real call works here (glibc) or is a no-op elsewhere, never an error
    monkeypatch.setattr(job_mod, "TRIM_EVERY_PIXELS", 1000)
    calls = []
    monkeypatch.setattr(job_mod, "release_free_memory", lambda: calls.append(1))
    for i in range(6):
        Image.fromarray(rand_image(20, 25 + i, i)).save(tmp_path / f"im{i}.png")  # 500+ pixels each, all sizes differ
    items, _ = discover([tmp_path], tmp_path / "out")
    PredictJob(Predictor(make_checkpoint(), device="cpu"), PredictOptions(out=tmp_path / "out", workers=0, procs=1)).run(items)
    assert len(calls) == 3  # 6 images of 500-600 pixels: every second one crosses 1000


def test_a_large_image_waits_for_pending_writes(tmp_path, monkeypatch):
    """Before a tiled image, earlier predictions are written and freed: never two large images held at once."""
    import time

    events = []
    from fcn_label.predict.sink import Sink

    write = Sink.try_write

    def slow_write(self, it, *a):
        time.sleep(0.05)
        outcome = write(self, it, *a)
        events.append(it.rel)
        return outcome

    tiled = Predictor.predict_tiled
    monkeypatch.setattr(Sink, "try_write", slow_write)
    monkeypatch.setattr(Predictor, "predict_tiled", lambda self, img: events.append("tiling") or tiled(self, img))
    for i in range(4):
        Image.fromarray(rand_image(16, 16, i)).save(tmp_path / f"a{i}.png")
    Image.fromarray(rand_image(40, 40, 9)).save(tmp_path / "b.png")
    items, _ = discover([tmp_path], tmp_path / "out")
    pred = Predictor(make_checkpoint(), device="cpu", tile=32)
    # encoders=0: the writes run in threads of this process, where the events can be seen
    res = PredictJob(pred, PredictOptions(out=tmp_path / "out", workers=0, batch_size=2, encoders=0, procs=1)).run(items)
    assert res.done == 5
    assert sorted(events[:4]) == ["a0", "a1", "a2", "a3"] and events[4:] == ["tiling", "b"]


def test_batches_are_capped_by_pixels_not_only_by_count(monkeypatch):
    """Eight large same-size images do not go through the network together; results are unchanged."""
    monkeypatch.setattr(predict_mod, "MAX_BATCH_PIXELS", 3 * 40 * 50)
    ck = make_checkpoint()
    pred = Predictor(ck, device="cpu")
    seen = []
    logits = pred.logits
    monkeypatch.setattr(pred, "logits", lambda x: seen.append(x.shape[0]) or logits(x))
    imgs = [rand_image(40, 50, i) for i in range(8)] + [rand_image(10, 10, 9)] * 5
    out = pred.predict_arrays(imgs, batch_size=8)
    assert seen == [3, 3, 2, 5]  # 40x50 images three at a time; the small ones in one batch
    model = ck.build()
    for img, p in zip(imgs, out):
        assert np.array_equal(p.labels, one_at_a_time(ck, img, model))


def test_tiling_accumulator_is_one_band_high(monkeypatch):
    """The probability accumulator is classes x tile x width, however tall the image."""
    pred = Predictor(make_checkpoint(), device="cpu", tile=32, tile_overlap=0.25)
    shapes = []
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: (lambda t: shapes.append(tuple(t.shape)) or t)(zeros(*a, **k)))
    pred.predict_tiled(rand_image(400, 70, 0))
    assert max(np.prod(s) for s in shapes) == 5 * 32 * 70


@pytest.mark.slow
def test_memory_benchmark_stays_under_the_documented_bound(tmp_path):
    """A 6000x4500 photo and 60 mixed images with the compact model: peak RSS of the job < 4 GB."""
    res = tmp_path / "mem.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "--scenario", "all", "--big", "6000x4500",
                    "--images", "60", "--agree", "1200x900", "--json", str(res)], check=True, timeout=1800)
    r = json.loads(res.read_text())
    for scenario in ("big", "folder"):
        assert r[scenario]["main_peak_mb"] < 4096 and r[scenario]["with_workers_peak_mb"] < 4096, r[scenario]
    assert r["agreement"]["tile_1024_equal_pct"] > 95
