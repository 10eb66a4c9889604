import os
from pathlib import Path

import pytest
import torch

# Tests use tiny models; one thread keeps them fast and predictable on a 2-core CI box.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared"))
CAMVID = SHARED / "data" / "camvid"
FIXTURES = SHARED / "data" / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def camvid():
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (set FCN_LABEL_SHARED to the shared/ folder)")
    return CAMVID


@pytest.fixture
def fixtures_dir():
    if not (FIXTURES / "voc").is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES} (set FCN_LABEL_SHARED to the shared/ folder)")
    return FIXTURES
