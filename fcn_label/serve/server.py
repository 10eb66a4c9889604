"""The HTTP side of the Label Studio ML backend: routes, limits, authentication, JSON in and out.

The standard library's ThreadingHTTPServer: the protocol is five small JSON routes, the work is
a forward pass serialised behind one lock, so a framework would add a dependency and nothing a
user would notice. What keeps it safe to run:

- at most ``max_predict`` /predict calls are held at once (waiting for the model or fetching
  images); the next one is answered 503 at once, so memory stays bounded under a burst;
- request bodies over ``max_body`` bytes: 413 before reading them; images: see :mod:`.fetch`;
- POST bodies must be JSON (``Content-Type: application/json``): 415 otherwise, 400 when malformed;
- with ``basic_auth`` every route asks for it (Label Studio sends it when the ML backend is
  connected with "Basic Authentication"), compared in constant time.

Every failure is answered with ``{"error": "one line"}`` and a 4xx (the client's part) or 5xx
(the server's part); no request can stop the server.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from ..errors import InputError
from ..export.labelstudio import mask_regions
from ..guard import first_line
from .fetch import FetchError, ImageFetcher
from .labelconfig import BrushTarget, brush_target
from .model import ModelStore
from .training import Learner

DEFAULT_MAX_PREDICT = 50
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # a /train call carries the project's annotations, brush RLE included
MAX_TASKS = 1000  # tasks in one /predict call
CHUNK = 8  # a /predict call's images fetched and predicted this many at a time
TRAIN_ACTIONS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Backend:
    """The protocol, independent of HTTP: each route takes the parsed JSON and returns (status, JSON)."""

    def __init__(self, store: ModelStore, fetcher: ImageFetcher, learner: Learner | None = None,
                 max_predict: int = DEFAULT_MAX_PREDICT, fetch_workers: int = 4, log: Callable = print):
        self.store, self.fetcher, self.learner, self.log = store, fetcher, learner, log
        self.predict_slots = threading.BoundedSemaphore(max_predict)
        self.max_predict = max_predict
        self._configs: dict[str, str] = {}  # project id -> label config, from /setup
        self._pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fcn-label-fetch")

    # -- routes ----------------------------------------------------------------
    def health(self) -> dict:
        s = self.store.served
        out = {"status": "UP", "model_class": "fcn-label", "model_version": s.version, "classes": list(s.classes)}
        if self.learner is not None:
            out["training"] = self.learner.status()
        return out

    def versions(self) -> dict:
        return {"versions": self.store.versions, "model_version": self.store.served.version}

    def setup(self, body: dict) -> dict:
        """Label Studio connects a project: check its config fits the model; answer the model version."""
        schema = body.get("schema") or body.get("label_config")
        try:
            brush_target(schema, list(self.store.served.classes))
        except InputError as e:
            raise HttpError(400, str(e)) from None
        self.fetcher.use_token(body.get("access_token"))
        if body.get("project") is not None:
            self._configs[_project_key(body["project"])] = schema
        return {"model_version": self.store.served.version}

    def validate(self, body: dict) -> dict:
        """Label Studio checks a config before saving it: the same check as /setup."""
        try:
            brush_target(body.get("config"), list(self.store.served.classes))
        except InputError as e:
            raise HttpError(400, str(e)) from None
        return {}

    def _target(self, body: dict) -> BrushTarget:
        config = body.get("label_config") or self._configs.get(_project_key(body.get("project")))
        try:
            return brush_target(config, list(self.store.served.classes))
        except InputError as e:
            raise HttpError(400, str(e)) from None

    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise HttpError(400, "field 'tasks' missing or empty: expected a list of Label Studio tasks")
        if len(tasks) > MAX_TASKS:
            raise HttpError(413, f"{len(tasks)} tasks in one request; send at most {MAX_TASKS}")
        target = self._target(body)

        def image(t) -> np.ndarray:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
                raise FetchError("field 'data' missing: not a Label Studio task", 400)
            if target.data_key not in t["data"]:
                raise FetchError(f"field 'data.{target.data_key}' missing (the config's <Image value=\"$"
                                 f"{target.data_key}\">); the task has {', '.join(map(str, t['data'])) or 'no data'}", 400)
            return self.fetcher.fetch(t["data"][target.data_key], t.get("id"))

        served = self.store.served  # one model for the whole request, even if a round switches meanwhile
        results: list[dict | None] = [None] * len(tasks)
        errors: dict[int, FetchError] = {}
        for start in range(0, len(tasks), CHUNK):  # bounded memory: a chunk's images at a time
            futures = {i: self._pool.submit(image, tasks[i]) for i in range(start, min(len(tasks), start + CHUNK))}
            arrays = {}
            for i, f in futures.items():
                try:
                    arrays[i] = f.result()
                except FetchError as e:
                    errors[i] = e
                except Exception as e:  # one task's image: that task's answer, not the request's
                    errors[i] = FetchError(first_line(e), 422)
            idx = sorted(arrays)
            for i, p in zip(idx, self.store.predict([arrays.pop(i) for i in idx], served)):
                regions = mask_regions(p.labels, list(served.classes), str(_tid(tasks[i])))
                for r in regions:
                    r["from_name"], r["to_name"] = target.from_name, target.to_name
                results[i] = {"result": regions, "score": float(np.mean(p.confidence, dtype=np.float64)),
                              "model_version": served.version}
        if len(errors) == len(tasks):
            first = errors[min(errors)]
            raise HttpError(first.status, "; ".join(f"task {_tid(tasks[i])}: {e}" for i, e in sorted(errors.items())[:5]))
        for i, e in errors.items():
            self.log(f"predict: task {_tid(tasks[i])}: {e}")
            # no "result": Label Studio logs this answer and leaves the task without a prediction
            results[i] = {"model_version": served.version, "error": f"task {_tid(tasks[i])}: {e}"}
        return {"results": results, "model_version": served.version}

    def webhook(self, body: dict) -> dict:
        action = body.get("action")
        if action not in TRAIN_ACTIONS:
            return {"status": "ignored", "action": action}
        return self._train(body.get("project"), None, None)

    def train(self, body: dict) -> dict:
        """Label Studio's "Start training" without the webhook feature: the annotated tasks come along."""
        tasks = body.get("annotations")
        if tasks is not None and not isinstance(tasks, list):
            raise HttpError(400, "field 'annotations' must be a list of annotated tasks")
        return self._train(body.get("project"), body.get("label_config"), tasks)

    def _train(self, project, label_config, tasks) -> dict:
        if self.learner is None:
            raise HttpError(400, "training is off (the backend was started with --no-train)")
        if project is None:
            raise HttpError(400, "field 'project' missing: which project's annotations to learn from")
        if label_config is None:
            label_config = self._configs.get(_project_key(project)) or (
                project.get("label_config") if isinstance(project, dict) else None)
        return {"status": self.learner.submit(project, label_config, tasks)}

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _project_key(project) -> str:
    if isinstance(project, dict):
        project = project.get("id")
    return str(project).split(".")[0]


def _tid(task) -> object:
    return task.get("id", "?") if isinstance(task, dict) else "?"


class Handler(BaseHTTPRequestHandler):
    server_version = "fcn-label-serve"
    timeout = 120  # seconds a connection may sit idle or trickle its request before it is closed
    protocol_version = "HTTP/1.1"
    backend: Backend
    auth: str | None = None  # "user:pass"
    max_body: int = DEFAULT_MAX_BODY
    log_fn: Callable = print

    GET_ROUTES = {"/health": "health", "/": "health", "/versions": "versions"}
    POST_ROUTES = {"/setup": "setup", "/validate": "validate", "/predict": "predict", "/webhook": "webhook",
                   "/train": "train"}

    def log_message(self, fmt, *args):  # one line per request through the backend's log, not stderr's
        pass

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        if status >= 400:  # the message as the reason phrase too: Label Studio shows that, not the body
            reason = " ".join(str(obj.get("error", "")).split())[:400].encode("latin-1", "replace").decode("latin-1")
            self.send_response(status, reason or None)
        else:
            self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="fcn-label"')
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if not self.auth:
            return True
        h = self.headers.get("Authorization", "")
        if not h.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(h[6:], validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self.auth.encode())

    def _body(self) -> dict:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, f"Content-Type {ctype or 'missing'!s}: send application/json")
        n = self.headers.get("Content-Length")
        if n is None or not n.isdigit():
            raise HttpError(411, "Content-Length missing: send the JSON body with its length")
        if int(n) > self.max_body:
            raise HttpError(413, f"body of {int(n):,} bytes is over the limit of {self.max_body:,} (--max-body)")
        try:
            raw = self.rfile.read(int(n))
        except OSError:  # a client that promised more than it sent, until the connection timed out
            raise HttpError(400, f"body shorter than its Content-Length {n}") from None
        self._read = True
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"malformed JSON ({e})") from None
        if not isinstance(body, dict):
            raise HttpError(400, "expected a JSON object")
        return body

    def _route(self, routes: dict, post: bool) -> None:
        t0 = time.monotonic()
        path = self.path.split("?")[0].rstrip("/") or "/"
        status, self._read = 500, False
        try:
            if not self._authorised():
                raise HttpError(401, "authentication required: connect with the backend's basic auth user and password")
            name = routes.get(path)
            if name is None:
                other = self.POST_ROUTES if not post else self.GET_ROUTES
                if path in other:
                    raise HttpError(405, f"{path} takes {'POST' if not post else 'GET'}")
                raise HttpError(404, f"no route {path}; the backend answers GET /health, /versions and POST /setup, "
                                     "/validate, /predict, /webhook, /train")
            fn = getattr(self.backend, name)
            if not post:
                status, obj = 200, fn()
            elif name == "predict":
                if not self.backend.predict_slots.acquire(blocking=False):
                    raise HttpError(503, f"busy: {self.backend.max_predict} predictions already in progress; retry")
                try:
                    status, obj = 200, fn(self._body())
                finally:
                    self.backend.predict_slots.release()
            else:
                status, obj = 200, fn(self._body())
        except HttpError as e:
            status, obj = e.status, {"error": str(e)}
        except Exception as e:  # the request's boundary: a bug answers 500 with its line, the server goes on
            status, obj = 500, {"error": f"internal error: {first_line(e)}"}
            self.log_fn(traceback.format_exc())
        try:
            if post and not self._read:
                self.close_connection = True  # a refused body is not read: it would be taken for the next request
            self._send(status, obj)
        except OSError:
            return  # the client went away
        if status >= 400 or path != "/health":
            self.log_fn(f"{self.command} {path} {status} {1000 * (time.monotonic() - t0):.0f} ms"
                        + (f": {obj.get('error')}" if status >= 400 else ""))

    def do_GET(self):  # noqa: N802
        self._route(self.GET_ROUTES, post=False)

    def do_POST(self):  # noqa: N802
        self._route(self.POST_ROUTES, post=True)


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 9090, basic_auth: str | None = None,
                max_body: int = DEFAULT_MAX_BODY, log: Callable = print) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one) answering with ``backend``; call serve_forever()."""
    handler = type("BoundHandler", (Handler,), {"backend": backend, "auth": basic_auth, "max_body": max_body,
                                                "log_fn": staticmethod(log)})
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    return srv
