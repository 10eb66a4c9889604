"""Fixtures of the review tests: a predict output folder and a headless Debian Chromium."""

from pathlib import Path

import pytest

from support.review_folder import run_predict

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def pred_folder(tmp_path_factory):
    return run_predict(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium (.ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip('playwright not installed: pip install -e ".[browser]" (.ci/run does it)')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
