"""`fcn-label serve` against real HTTP: the backend on 127.0.0.1, requests through urllib, and a stand-in
for Label Studio (a second local server that serves task images and the annotation export only with
the API token). Masks are checked against the Predictor run directly on the same images."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_label.checkpoint import load_checkpoint, save_checkpoint
from fcn_label.datasets.labelstudio import decode_region
from fcn_label.export.labelstudio import labelling_config, mask_regions
from fcn_label.predict import Predictor
from fcn_label.serve import Backend, ImageFetcher, Learner, ModelStore, Recipe, make_server
from fcn_label.serve.fetch import FetchError

from support.helpers import make_checkpoint, rand_image

pytest.importorskip("label_studio_sdk.converter.brush", reason='needs label-studio-sdk: pip install "fcn-label[export]"')

TOKEN = "test-token-123"


def png(arr: np.ndarray) -> bytes:
    b = BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


class FakeLabelStudio:
    """Serves ``routes[path] = bytes | (status, headers, bytes)`` to requests with the token; counts hits."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.hits: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                outer.hits.append(self.path)
                outer.gate.wait(30)
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                r = outer.routes.get(self.path)
                status, headers, body = (404, {}, b"") if r is None else r if isinstance(r, tuple) else (200, {}, r)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def ls():
    f = FakeLabelStudio()
    yield f
    f.close()


@pytest.fixture
def weights(tmp_path):
    p = tmp_path / "tiny.pt"
    save_checkpoint(make_checkpoint(padding="same", bn=True, n=3), p)
    return p


def start(tmp_path, weights, ls, basic_auth=None, max_predict=50, train=True, max_pixels=10_000_000, epochs=1):
    state = tmp_path / "state"
    store = ModelStore(state, str(weights), device="cpu", log=lambda m: None)
    fetcher = ImageFetcher(ls.url, TOKEN, max_pixels=max_pixels, tmpdir=state)
    logs: list[str] = []
    learner = Learner(store, fetcher, Recipe(epochs=epochs, device="cpu", threads=1), log=logs.append) if train else None
    backend = Backend(store, fetcher, learner, max_predict=max_predict, log=logs.append)
    backend.logs = logs
    srv = make_server(backend, "127.0.0.1", 0, basic_auth, max_body=1 << 20, log=lambda m: None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, backend, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def backend(tmp_path, weights, ls):
    made = []

    def make(**kw):
        srv, b, url = start(tmp_path, weights, ls, **kw)
        made.append((srv, b))
        return b, url

    yield make
    for srv, b in made:
        srv.shutdown()
        srv.server_close()
        b.close()


def call(url, path, body=None, ctype="application/json", auth=None, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def announce_huge_body(url):
    """Headers that promise a 2 MiB body, none sent: the answer must come from Content-Length alone."""
    import http.client

    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    r = conn.getresponse()
    out = r.status, json.loads(r.read())
    conn.close()
    return out


CLASSES = ["class0", "class1", "class2"]
CONFIG = labelling_config(CLASSES, [(1, 2, 3), (4, 5, 6), (7, 8, 9)])


def decode(results: list[dict], shape) -> np.ndarray:
    got = np.full(shape, 255, np.uint8)
    for r in results:
        assert (r["from_name"], r["to_name"], r["type"]) == ("label", "image", "brushlabels")
        got[decode_region(r["value"]["rle"], *shape)] = CLASSES.index(r["value"]["brushlabels"][0])
    return got


def test_predict_answers_each_task_with_predicts_mask_and_mean_confidence(backend, ls, weights):
    b, url = backend()
    # same-size images share batches; more tasks than one chunk of fetching and predicting
    imgs = {k: rand_image(40, 56, k) if k % 3 else rand_image(33, 47, k) for k in range(1, 12)}
    for k, a in imgs.items():
        ls.routes[f"/data/upload/1/img{k}.png"] = png(a)
    status, setup = call(url, "/setup", {"project": "1.123", "schema": CONFIG, "hostname": ls.url})
    assert status == 200
    want_version = f"tiny-{__import__('hashlib').sha256(weights.read_bytes()).hexdigest()[:8]}"
    assert setup == {"model_version": want_version}
    tasks = [{"id": k, "data": {"image": f"/data/upload/1/img{k}.png"}} for k in (3, 1, 2, *range(4, 12))]
    status, out = call(url, "/predict", {"tasks": tasks, "project": "1.123", "label_config": CONFIG})
    assert status == 200 and len(out["results"]) == 11
    ref = Predictor(load_checkpoint(weights), device="cpu")
    for t, res in zip(tasks, out["results"]):
        (p,) = ref.predict_arrays([imgs[t["id"]]])
        assert res["model_version"] == want_version
        assert np.array_equal(decode(res["result"], p.labels.shape), p.labels)
        assert res["score"] == pytest.approx(float(p.confidence.mean()), abs=1e-6)
    status, h = call(url, "/health")
    assert status == 200 and h["status"] == "UP" and h["model_version"] == want_version


def test_config_without_the_models_classes_is_refused_with_the_reason(backend):
    b, url = backend()
    bad = CONFIG.replace('value="class2"', 'value="road"')
    status, out = call(url, "/setup", {"project": 1, "schema": bad})
    assert status == 400 and "lacks the model's classes class2" in out["error"]
    status, out = call(url, "/setup", {"project": 1, "schema": "<View><Image name='i' value='$i'/></View>"})
    assert status == 400 and "no <BrushLabels>" in out["error"]
    status, out = call(url, "/predict", {"tasks": [{"id": 1, "data": {"image": "/x.png"}}], "label_config": "<View"})
    assert status == 400 and "not valid XML" in out["error"]


def test_bad_requests_get_4xx_with_a_message_and_the_server_goes_on(backend, ls):
    b, url = backend(max_pixels=1000)
    ls.routes["/data/upload/big.png"] = png(rand_image(40, 40, 0))  # 1600 px > 1000
    ls.routes["/data/upload/junk.png"] = b"not an image at all"
    one = lambda data: {"tasks": [{"id": 7, "data": data}], "label_config": CONFIG}  # noqa: E731
    cases = [
        (call(url, "/predict", raw=b"{not json"), 400, "malformed JSON"),
        (call(url, "/predict", raw=b"[1, 2]"), 400, "expected a JSON object"),
        (call(url, "/predict", one({"image": "/data/upload/1.png"}), ctype="text/plain"), 415, "application/json"),
        (call(url, "/predict", {"tasks": []}), 400, "'tasks' missing or empty"),
        (call(url, "/predict", one({"photo": "/data/upload/1.png"})), 400, "'data.image' missing"),
        (call(url, "/predict", one({"image": "/data/upload/nope.png"})), 404, "answered 404"),
        (call(url, "/predict", one({"image": "/data/upload/big.png"})), 413, "40x40 pixels is over the limit"),
        (call(url, "/predict", one({"image": "/data/upload/junk.png"})), 422, "not a recognised image"),
        (call(url, "/predict", one({"image": "file:///etc/passwd"})), 400, "unsupported image URL"),
        (announce_huge_body(url), 413, "over the limit"),
        (call(url, "/nowhere"), 404, "no route /nowhere"),
        (call(url, "/predict"), 405, "takes POST"),
    ]
    for (status, out), want_status, text in cases:
        assert status == want_status and text in out["error"], (status, out)
    assert call(url, "/health")[0] == 200


def test_only_label_studio_and_allow_listed_hosts_are_fetched(backend, ls, tmp_path):
    b, url = backend()
    ls.routes["/data/upload/a.png"] = png(rand_image(24, 24, 0))
    other = FakeLabelStudio()  # an internal address nobody allowed
    try:
        other.routes["/secret.png"] = png(rand_image(24, 24, 0))
        task = lambda u: {"tasks": [{"id": 1, "data": {"image": u}}], "label_config": CONFIG}  # noqa: E731
        status, out = call(url, "/predict", task(other.url + "/secret.png"))
        assert status == 403 and "not allow-listed" in out["error"]
        # a presigned-looking URL to a private address, and a redirect off Label Studio to one, are refused too
        status, out = call(url, "/predict", task(other.url.replace("http:", "https:") + "/s.png?X-Amz-Signature=ab"))
        assert status == 403
        ls.routes["/data/upload/redirect.png"] = (302, {"Location": other.url + "/secret.png"}, b"")
        status, out = call(url, "/predict", task("/data/upload/redirect.png"))
        assert status == 403 and "not allow-listed" in out["error"]
        assert other.hits == []  # never contacted
        # allow-listing the host lets it through, without Label Studio's token
        b.fetcher.allow_hosts.add("127.0.0.1")
        status, out = call(url, "/predict", task(other.url + "/secret.png"))
        assert status == 401 or status == 502  # the other server wants a token the backend does not send it
        assert other.hits == ["/secret.png"]
    finally:
        other.close()
    # a cloud URI goes through Label Studio's presign endpoint for that task
    f = ImageFetcher(ls.url, TOKEN)
    target, auth = f.resolve("s3://bucket/a b.png", 42)
    assert auth and target.startswith(ls.url + "/tasks/42/presign/?fileuri=")
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL is not set"):
        ImageFetcher(None).resolve("/data/upload/a.png")


def test_basic_auth_on_every_route(backend, ls):
    b, url = backend(basic_auth="ann:s3cret")
    assert call(url, "/health")[0] == 401
    assert call(url, "/health", auth="ann:wrong")[0] == 401
    assert call(url, "/setup", {"schema": CONFIG}, auth="bob:s3cret")[0] == 401
    assert call(url, "/health", auth="ann:s3cret")[0] == 200
    assert call(url, "/setup", {"schema": CONFIG, "project": 1}, auth="ann:s3cret")[0] == 200


def test_predict_calls_beyond_the_bound_get_503_at_once(backend, ls):
    b, url = backend(max_predict=2)
    ls.routes["/data/upload/a.png"] = png(rand_image(24, 24, 0))
    ls.gate.clear()  # image fetches hang until released: two predictions are held
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/a.png"}}], "label_config": CONFIG}
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(call(url, "/predict", body))) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(ls.hits) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    status, out = call(url, "/predict", body)
    assert status == 503 and "busy" in out["error"] and time.monotonic() - t0 < 5
    assert call(url, "/health")[0] == 200  # other routes still answer
    ls.gate.set()
    for t in threads:
        t.join(60)
    assert [s for s, _ in answers] == [200, 200]
    assert call(url, "/predict", body)[0] == 200  # the slots were given back


def annotated_export(imgs: dict[int, np.ndarray], labels: dict[int, np.ndarray]) -> list[dict]:
    """A Label Studio JSON export of tasks annotated with ``labels`` (the brush RLE the export writes)."""
    out = []
    for k, a in imgs.items():
        res = mask_regions(labels[k], CLASSES, f"t{k}")
        out.append({"id": k, "data": {"image": f"/data/upload/t{k}.png"},
                    "annotations": [{"id": 100 + k, "was_cancelled": False, "result": res}]})
    return out


def wait_training(url, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = call(url, "/health")[1]
        if not h["training"]["training"] and not h["training"]["pending"]:
            return h
        time.sleep(0.2)
    raise AssertionError("training did not finish")


def setup_training_data(ls):
    imgs = {k: rand_image(48, 64, 10 + k) for k in (1, 2)}
    labels = {k: (np.arange(64)[None, :].repeat(48, 0) * 3 // 64).astype(np.uint8) for k in imgs}  # three stripes
    for k, a in imgs.items():
        ls.routes[f"/data/upload/t{k}.png"] = png(a)
    tasks = annotated_export(imgs, labels)
    bad = copy.deepcopy(tasks[0])  # a third annotation paints a label the model does not know: left out, named
    bad["id"], bad["data"]["image"] = 3, "/data/upload/t3.png"
    bad["annotations"][0]["result"][0]["value"]["brushlabels"] = ["road"]
    ls.routes["/data/upload/t3.png"] = png(imgs[1])
    ls.routes["/api/projects/5/export?exportType=JSON&download_all_tasks=false"] = json.dumps(tasks + [bad]).encode()
    return imgs


def test_a_training_round_switches_to_new_weights_and_keeps_the_old(backend, ls, tmp_path, weights):
    imgs = setup_training_data(ls)
    b, url = backend(epochs=2)
    old = call(url, "/health")[1]["model_version"]
    status, out = call(url, "/webhook", {"action": "START_TRAINING", "project": {"id": 5, "label_config": CONFIG}})
    assert status == 200 and "started" in out["status"]
    h = wait_training(url)
    last = h["training"]["last"]
    assert last["ok"], last["message"]
    new = h["model_version"]
    assert new != old and new == last["version"] and last["tasks"] == 2
    assert any("task 3" in m and "'road' is not a class" in m for m in b.logs), b.logs
    cur = json.loads((tmp_path / "state/current.json").read_text())
    new_file = tmp_path / "state/models" / cur["file"]
    assert cur["version"] == new and new_file.is_file() and weights.is_file()
    assert call(url, "/versions")[1]["versions"] == [old, new]
    # predictions follow the new weights
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/t1.png"}}], "label_config": CONFIG}
    status, out = call(url, "/predict", body)
    (p,) = Predictor(load_checkpoint(new_file), device="cpu").predict_arrays([imgs[1]])
    (q,) = Predictor(load_checkpoint(weights), device="cpu").predict_arrays([imgs[1]])
    assert out["results"][0]["model_version"] == new
    assert np.array_equal(decode(out["results"][0]["result"], p.labels.shape), p.labels)
    assert out["results"][0]["score"] == pytest.approx(float(p.confidence.mean()), abs=1e-6)
    assert abs(float(p.confidence.mean()) - float(q.confidence.mean())) > 1e-3  # the round did change the model
    # the default recipe trains every layer (the docs' table)
    a, c = load_checkpoint(weights).state_dict, load_checkpoint(new_file).state_dict
    assert not torch.equal(a["conv1_1.weight"], c["conv1_1.weight"])
    assert not torch.equal(a["score_fr.weight"], c["score_fr.weight"])
    # a restart serves the trained weights
    assert ModelStore(tmp_path / "state", str(weights), device="cpu").served.version == new


def test_training_killed_with_sigkill_leaves_the_served_model(backend, ls, tmp_path, weights):
    setup_training_data(ls)
    b, url = backend(epochs=500)
    old = call(url, "/health")[1]["model_version"]
    assert call(url, "/train", {"project": "5.1", "label_config": CONFIG,
                                "annotations": json.loads(ls.routes["/api/projects/5/export?exportType=JSON&download_all_tasks=false"])})[0] == 200
    deadline = time.monotonic() + 60
    while (b.learner.current is None or b.learner.current.pid is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = b.learner.current.pid
    time.sleep(1.0)
    assert call(url, "/webhook", {"action": "START_TRAINING", "project": {"id": 5, "label_config": CONFIG}})[1]["status"].startswith("queued")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (b.learner.last is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    last = b.learner.last
    assert last.ok is False and "status -9" in last.message and old in last.message
    assert call(url, "/health")[1]["model_version"] == old
    assert not (tmp_path / "state/current.json").exists()
    b.learner.close()  # the queued round is dropped with the backend
    assert ModelStore(tmp_path / "state", str(weights), device="cpu").served.version == old


def test_one_bad_task_among_good_ones_loses_only_itself(backend, ls, weights):
    b, url = backend()
    img = rand_image(30, 40, 5)
    ls.routes["/data/upload/ok.png"] = png(img)
    tasks = [{"id": 1, "data": {"image": "/data/upload/ok.png"}}, {"id": 2, "data": {"image": "/data/upload/gone.png"}}]
    status, out = call(url, "/predict", {"tasks": tasks, "label_config": CONFIG})
    assert status == 200
    good, bad = out["results"]
    (p,) = Predictor(load_checkpoint(weights), device="cpu").predict_arrays([img])
    assert np.array_equal(decode(good["result"], p.labels.shape), p.labels)
    assert "result" not in bad and bad["error"].startswith("task 2: /data/upload/gone.png: the server answered 404")


def test_label_studio_sees_the_message_as_the_reason_phrase(backend):
    """Label Studio shows requests' HTTPError text ('400 Client Error: REASON for url'), not the body."""
    b, url = backend()
    req = urllib.request.Request(url + "/setup", data=json.dumps({"schema": "<View/>"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "no <BrushLabels> control" in e.value.reason
    assert call(url, "/validate", {"config": CONFIG}) == (200, {})
    assert call(url, "/validate", {"config": CONFIG.replace("class1", "x")})[0] == 400


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_backend_killed_with_sigkill_takes_its_training_child_along(tmp_path):
    """The child a round runs in dies with the backend, so no orphan trains for weights nobody installs."""
    import subprocess

    child_code = ("import os, time; from fcn_label.serve.training import _die_with_parent; _die_with_parent(); "
                  "open(os.environ['READY'], 'w').write(str(os.getpid())); time.sleep(120)")
    parent_code = ("import os, subprocess, sys, time; "
                   "env = dict(os.environ, FCN_LABEL_SERVE_PARENT=str(os.getpid())); "
                   f"subprocess.Popen([sys.executable, '-c', {child_code!r}], env=env); time.sleep(120)")
    ready = tmp_path / "child.pid"
    env = dict(os.environ, READY=str(ready), PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (ready.is_file() and ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(ready.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break  # dead, waiting for init to reap it
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the training child outlived its backend")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_freeze_backbone_keeps_the_backbone_and_batchnorm_statistics():
    from fcn_label.serve.training import freeze_backbone

    model = make_checkpoint(padding="same", bn=True, n=3).build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_backbone(model)
    model.train()  # as the training loop does every epoch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.from_numpy(rand_image(64, 64, 0).copy()).permute(2, 0, 1)[None].float() / 255
    model(x).mean().backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("conv", "bn")))
    assert not torch.equal(before["score_fr.weight"], after["score_fr.weight"])
