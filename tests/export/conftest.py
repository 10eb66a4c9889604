"""A real `fcn-label predict` folder (shipped CamVid model on the repo's example frames), made once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.export_folder import predict

REPO = Path(__file__).resolve().parents[2]


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




@pytest.fixture(scope="session")
def camvid_pred(tmp_path_factory) -> Path:
    """Predict on the first 8 CamVid val frames (real street scenes: many small regions and holes)."""
    import os

    CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"  # as tests/conftest.py
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (set FCN_LABEL_SHARED to the shared/ folder)")
    root = tmp_path_factory.mktemp("camvid")
    lst = root / "some_val.txt"
    lines = (CAMVID / "val.txt").read_text().split("\n")[:8]
    lst.write_text("".join(f"{CAMVID / l.split()[0]}\n" for l in lines if l.strip()))
    return predict(lst, root / "pred")
