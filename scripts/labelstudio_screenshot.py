"""docs/labelstudio.png: Label Studio showing a mask that `fcn-label serve` predicted.

    FCN_LABEL_STUDIO_BIN=LSV/bin/label-studio python scripts/labelstudio_screenshot.py [--out docs/labelstudio.png]

Starts Label Studio (its own venv; USE_DEFAULT_BANNED_SUBNETS=false so it may call a backend on
127.0.0.1) and `fcn-label serve` on 127.0.0.1 with temporary folders, makes a project with the
export's config over one example frame, connects the backend, lets Label Studio retrieve the
prediction, then opens the task in headless Chromium (Playwright, /usr/bin/chromium) and saves a
screenshot. Both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"{what} did not start")
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "labelstudio.png")
    ap.add_argument("--image", default="0016E5_08159.png", help="an example frame under examples/")
    a = ap.parse_args()
    exe = os.environ.get("FCN_LABEL_STUDIO_BIN") or shutil.which("label-studio")
    if not exe:
        raise SystemExit("label-studio not found: set FCN_LABEL_STUDIO_BIN")
    from label_studio_sdk.client import LabelStudio
    from playwright.sync_api import sync_playwright

    from fcn_label.checkpoint import load_checkpoint, resolve_weights
    from fcn_label.export.labelstudio import labelling_config

    tmp = Path(tempfile.mkdtemp(prefix="ls-shot-"))
    files = tmp / "files"
    (files / "photos").mkdir(parents=True)
    shutil.copy(REPO / "examples" / a.image, files / "photos" / a.image)
    ls_port, be_port = free_port(), free_port()
    token, user, password = "fcnlabelshot0123456789", "demo@example.com", "secret123"
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(tmp / "data"), DJANGO_DB="sqlite",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", USE_DEFAULT_BANNED_SUBNETS="false",
               LOCAL_FILES_SERVING_ENABLED="true", LOCAL_FILES_DOCUMENT_ROOT=str(files))
    ls_url, be_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{be_port}"
    procs = []
    try:
        procs.append(subprocess.Popen([exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(ls_port),
                                       "--data-dir", str(tmp / "data"), "--username", user, "--password", password,
                                       "--user-token", token], cwd=tmp, env=env, stdout=open(tmp / "ls.log", "wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        procs.append(subprocess.Popen([sys.executable, "-m", "fcn_label", "serve", "--port", str(be_port), "--state",
                                       str(tmp / "state"), "--label-studio-url", ls_url, "--api-key", token,
                                       "--no-train"], cwd=REPO, stdout=open(tmp / "backend.log", "wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env=dict(os.environ, PYTHONPATH=str(REPO))))
        wait(ls_url + "/health", procs[0], "label-studio")
        wait(be_url + "/health", procs[1], "fcn-label serve")
        ck = load_checkpoint(resolve_weights(None))
        client = LabelStudio(base_url=ls_url, api_key=token)
        project = client.projects.create(title="CamVid street scenes", label_config=labelling_config(ck.classes, ck.palette))
        client.import_storage.local.create(project=project.id, path=str(files / "photos"), use_blob_urls=True)
        client.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d=photos/{a.image}"}])
        client.ml.create(project=project.id, url=be_url, title="fcn-label serve", is_interactive=False, auto_update=True)
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
        (task,) = list(client.tasks.list(project=project.id, fields="all"))
        assert task.predictions, "no prediction stored; see " + str(tmp / "backend.log")
        print(json.dumps({"model_version": task.predictions[0].model_version, "score": task.predictions[0].score}))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(ls_url + "/user/login/")
            page.fill("input[name=email]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{ls_url}/projects/{project.id}/data?tab=0&task={task.id}")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(8000)  # the labelling interface draws the brush regions after loading
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(a.out))
            browser.close()
        print(f"wrote {a.out}")
    finally:
        for pr in procs:
            try:
                os.killpg(pr.pid, signal.SIGTERM)
                pr.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(pr.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
