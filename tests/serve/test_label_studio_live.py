"""The backend behind a real Label Studio server (slow): connected through Label Studio's API, asked for
predictions by Label Studio itself, read back through the API and decoded to exactly predict's masks;
two submitted annotations start a training round, after which the version and the masks follow the
new weights. Both servers run on 127.0.0.1 and are stopped by the test."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fcn_label.checkpoint import load_checkpoint, resolve_weights
from fcn_label.datasets.labelstudio import decode_region
from fcn_label.export.labelstudio import labelling_config
from fcn_label.images import read_image
from fcn_label.predict import Predictor

from support.servers import stop_group, wait_until_up

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def decode(prediction, names: list[str], shape) -> np.ndarray:
    got = np.full(shape, 255, np.uint8)
    for reg in prediction.result:
        got[decode_region(reg["value"]["rle"], *shape)] = names.index(reg["value"]["brushlabels"][0])
    return got


def retrieve_predictions(ls, pid: int) -> dict[str, object]:
    """Label Studio's own "Retrieve predictions" action over every task; then each task's newest prediction."""
    ls.client.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    out = {}
    for t in ls.client.tasks.list(project=pid, fields="all"):
        name = t.data["image"].split("d=")[-1]
        out[name] = (t, sorted(t.predictions, key=lambda p: p.created_at)[-1] if t.predictions else None)
    return out


@pytest.mark.integration
def test_label_studio_predicts_through_the_backend_and_trains_it(label_studio, tmp_path):
    ls = label_studio
    photos = ls.files / "photos"
    photos.mkdir()
    names_png = sorted(p.name for p in (REPO / "examples").glob("*.png"))
    for n in names_png:
        shutil.copy(REPO / "examples" / n, photos / n)
    ck = load_checkpoint(resolve_weights(None))
    names = list(ck.classes)

    port = free_port()
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "backend.log", "wb")
    backend = subprocess.Popen([sys.executable, "-m", "fcn_label", "serve", "--port", str(port), "--state", str(state),
                                "--label-studio-url", ls.url, "--api-key", ls.token, "--train-epochs", "2",
                                "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_until_up(lambda: get_json(url + "/health"), backend, tmp_path / "backend.log", "backend",
                               timeout=120)
        version = health["model_version"]
        assert version.startswith("fcn8s-compact-camvid-")

        project = ls.client.projects.create(title="fcn-label backend", label_config=labelling_config(names, ck.palette),
                                            min_annotations_to_start_training=2)
        ls.client.import_storage.local.create(project=project.id, path=str(photos), use_blob_urls=True)
        ls.client.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d=photos/{n}"}
                                                                for n in names_png])
        ls.client.ml.create(project=project.id, url=url, title="fcn-label", is_interactive=False, auto_update=True)

        ref = Predictor(ck, device="cpu")
        got = retrieve_predictions(ls, project.id)
        assert sorted(got) == [f"photos/{n}" for n in names_png]
        for name, (task, pred) in got.items():
            assert pred is not None, f"{name}: Label Studio stored no prediction; backend log: " + \
                (tmp_path / "backend.log").read_text()[-2000:]
            (p,) = ref.predict_arrays([read_image(ls.files / name)])
            assert pred.model_version == version
            assert pred.score == pytest.approx(float(p.confidence.mean()), abs=1e-5)
            assert np.array_equal(decode(pred, names, p.labels.shape), p.labels), name

        # two people submit corrected masks ('sky' painted as 'building'); the second starts a round
        for name in list(got)[:2]:
            task, pred = got[name]
            res = copy.deepcopy(pred.result)
            for r in res:
                r.pop("origin", None)
                if r["value"]["brushlabels"] == ["sky"]:
                    r["value"]["brushlabels"] = ["building"]
            ls.client.annotations.create(id=task.id, result=res, was_cancelled=False, ground_truth=False)
        deadline = time.monotonic() + 900
        while True:
            h = get_json(url + "/health")
            last = h["training"]["last"]
            if last is not None and not h["training"]["training"] and not h["training"]["pending"]:
                break
            assert time.monotonic() < deadline, "no training round finished: " + json.dumps(h)
            time.sleep(1)
        assert last["ok"], last["message"]
        assert last["tasks"] == 2
        new = h["model_version"]
        assert new != version and new.startswith("fcn8s-compact-camvid-ft")  # Label Studio may ask twice: a second round queues
        cur = json.loads((state / "current.json").read_text())
        new_ck = load_checkpoint(state / "models" / cur["file"])

        # Label Studio asks again (a new model_version) and the masks are the new weights'
        ref_new = Predictor(new_ck, device="cpu")
        got = retrieve_predictions(ls, project.id)
        for name, (task, pred) in got.items():
            (p,) = ref_new.predict_arrays([read_image(ls.files / name)])
            (q,) = ref.predict_arrays([read_image(ls.files / name)])
            assert pred.model_version == new
            assert np.array_equal(decode(pred, names, p.labels.shape), p.labels), name
            assert pred.score == pytest.approx(float(p.confidence.mean()), abs=1e-5)
            assert abs(float(p.confidence.mean()) - float(q.confidence.mean())) > 1e-4  # new weights, new scores
    finally:
        stop_group(backend)
        log.close()
