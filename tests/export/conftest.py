"""A real `fcn-label predict` folder (shipped CamVid model on the repo's example frames), made once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _export_helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


def predict(images: Path, out: Path) -> Path:
    r = run_cli("predict", str(images), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def pred_dir(tmp_path_factory) -> Path:
    """Predict on copies of examples/ (so tests may move or delete the photos)."""
    root = tmp_path_factory.mktemp("pred")
    shutil.copytree(REPO / "examples", root / "photos", ignore=shutil.ignore_patterns("*.md"))
    return predict(root / "photos", root / "pred")


@pytest.fixture
def pred_copy(pred_dir, tmp_path) -> Path:
    dst = tmp_path / "pred"
    shutil.copytree(pred_dir, dst)
    return dst


