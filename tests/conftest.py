import os
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------
# A real Label Studio server (slow: about a minute to start and migrate its SQLite database).


def label_studio_bin() -> str | None:
    """`label-studio` from FCN_LABEL_STUDIO_BIN or PATH: it is kept out of the project's venv because it
    pins its own numpy and Django stack (install it with pipx or in a separate venv)."""
    import shutil

    return os.environ.get("FCN_LABEL_STUDIO_BIN") or shutil.which("label-studio")


@dataclass
class LabelStudioServer:
    url: str
    token: str  # the user's legacy API token
    client: object  # label_studio_sdk.client.LabelStudio
    files: Path  # LOCAL_FILES_DOCUMENT_ROOT: what /data/local-files/?d=REL may serve (with a local storage)


@pytest.fixture
def label_studio(tmp_path):
    """Label Studio on 127.0.0.1 with a temporary data folder, stopped after the test.

    USE_DEFAULT_BANNED_SUBNETS=false lets it reach an ML backend on 127.0.0.1 (its SSRF guard refuses
    loopback addresses otherwise); local file serving is on under ``files``."""
    import socket
    import subprocess
    import urllib.request

    from support.servers import stop_group, wait_until_up

    exe = label_studio_bin()
    if not exe:
        pytest.skip("label-studio not installed (python3 -m venv LSV && LSV/bin/pip install label-studio "
                    "'sentry-sdk<3'; set FCN_LABEL_STUDIO_BIN to LSV/bin/label-studio)")
    pytest.importorskip("label_studio_sdk", reason='needs label-studio-sdk: pip install "fcn-label[export]"')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, files = tmp_path / "ls-data", tmp_path / "ls-files"
    files.mkdir()
    token = "fcnlabeltesttoken0123456789"
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), DJANGO_DB="sqlite",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
               USE_DEFAULT_BANNED_SUBNETS="false", LOCAL_FILES_SERVING_ENABLED="true",
               LOCAL_FILES_DOCUMENT_ROOT=str(files))
    log = open(tmp_path / "label-studio.log", "wb")
    proc = subprocess.Popen([exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data), "--username", "test@example.com", "--password", "secret123",
                             "--user-token", token], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> None:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status != 200:
                    raise OSError(f"/health answered {r.status}")

        wait_until_up(healthy, proc, tmp_path / "label-studio.log", "label-studio", timeout=300, poll=1)
        from label_studio_sdk.client import LabelStudio

        yield LabelStudioServer(url, token, LabelStudio(base_url=url, api_key=token), files)
    finally:
        stop_group(proc)  # the server we started, and its workers
        log.close()
