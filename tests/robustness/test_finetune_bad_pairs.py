"""finetune's data check: every bad pair is listed before training; skip_bad trains on the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from support import fuzz
from support.synth import tiny_config, write_list_dataset
from fcn_label.train import Trainer

TINY = ["--set", "width=0.0625", "--set", "fc_channels=16", "--set", "crop=32x48", "--set", "scale=0.75,1.5",
        "--set", "threads=1"]


def _damage(root: Path) -> list[Path]:
    """Spoil 4 of the 8 pairs four ways; return the file each message must name."""
    bomb_img = root / "train" / "img01.png"
    bomb_img.write_bytes(fuzz.ztxt_bomb_png(32, 48))  # decodes nowhere: Pillow's ValueError at open
    trunc = root / "trainannot" / "img03.png"
    trunc.write_bytes(trunc.read_bytes()[:60])
    label = root / "trainannot" / "img05.png"
    m = np.array(Image.open(label))
    m[0, 0] = 9
    Image.fromarray(m, mode="L").save(label)
    size = root / "trainannot" / "img06.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(size)
    return [bomb_img, trunc, label, size]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcn_label", "finetune", *args], capture_output=True, text=True,
                          timeout=300, env={"COLUMNS": "300", **__import__("os").environ})


def test_every_bad_pair_is_listed_and_nothing_trains(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    bad = _damage(tmp_path / "d")
    p = _run([str(data), "-o", str(tmp_path / "run"), "--num-classes", "3", *TINY])
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    for f in bad:
        assert str(f) in p.stderr, (f, p.stderr)
    assert "4 pairs cannot be used" in p.stderr and "--set skip_bad=true" in p.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_bad_trains_on_the_rest_and_says_how_many(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    bad = _damage(tmp_path / "d")
    p = _run([str(data), "-o", str(tmp_path / "run"), "--num-classes", "3", "--set", "skip_bad=true", "--epochs", "1",
              "--set", "max_steps=2", "--batch-size", "2", *TINY])
    assert p.returncode == 0, p.stderr
    assert "left out 4 of 8 train pairs; using the other 4" in p.stderr
    assert (tmp_path / "run" / "last.pt").is_file()


def test_skip_bad_keeps_each_cached_pair_with_its_files(tmp_path):
    """Dropping pairs renumbers the dataset: the cache must follow, pair i is still pair i's files."""
    data = write_list_dataset(tmp_path / "d", n=8)
    _damage(tmp_path / "d")
    t = Trainer(tiny_config(data, tmp_path / "run", skip_bad=True, cache=True), log=lambda m: None)
    t.setup()
    assert [p.image.name for p in t.train_ds.pairs] == ["img00.png", "img02.png", "img04.png", "img07.png"]
    for i, pair in enumerate(t.train_ds.pairs):
        img, mask = t.train_ds.load(i)
        assert np.array_equal(img, np.asarray(Image.open(pair.image).convert("RGB")))
        assert np.array_equal(mask, np.asarray(Image.open(pair.mask)))
