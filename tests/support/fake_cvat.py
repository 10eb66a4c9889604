"""A stand-in for the few CVAT server endpoints `cvat-cli task auto-annotate` calls, for one image task.

Not CVAT: it answers with the fields cvat-sdk's generated models require, serves the task's images as
one original-quality "imageset" chunk (a zip of the files as uploaded, which is what CVAT stores), and
keeps the body of the annotation upload for the test to decode. A real server needs Docker.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

VERSION = "2.80.0"
DATE = "2026-12-07T00:00:00Z"


class FakeCvat:
    def __init__(self, task_id: int, images: list[Path], labels: list[str], label_type: str = "any"):
        self.task_id = task_id
        self.images = images
        self.labels = [{"id": 100 + i, "name": n, "type": label_type, "color": "#000000", "attributes": [],
                        "sublabels": [], "has_parent": False} for i, n in enumerate(labels)]
        self.uploads: list[dict] = []
        self.requests: list[str] = []
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i, p in enumerate(images):
                z.writestr(f"{i:06d}{p.suffix}", p.read_bytes())
        self.chunk = buf.getvalue()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeCvat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _task(self) -> dict:
        n = len(self.images)
        return {"id": self.task_id, "url": f"{self.url}/api/tasks/{self.task_id}", "name": "fake", "mode": "annotation",
                "size": n, "data_chunk_size": n, "data_original_chunk_type": "imageset",
                "data_compressed_chunk_type": "imageset", "dimension": "2d", "status": "annotation",
                "created_date": DATE, "updated_date": DATE, "organization": None, "project_id": None,
                "jobs": {"count": 1, "completed": 0, "validation": 0, "url": f"{self.url}/api/jobs?task_id=1"},
                "labels": {"url": f"{self.url}/api/labels?task_id={self.task_id}"}, "owner": {"username": "u"}}

    def _meta(self) -> dict:
        from PIL import Image, ImageOps

        frames = []
        for p in self.images:
            with Image.open(p) as im:
                w, h = ImageOps.exif_transpose(im).size  # CVAT reports the size a viewer shows
            frames.append({"name": p.name, "width": w, "height": h, "related_files": 0, "has_related_context": False})
        return {"chunks_updated_date": DATE, "frames": frames, "deleted_frames": [], "image_quality": 100,
                "size": len(frames), "start_frame": 0, "stop_frame": len(frames) - 1, "frame_filter": "",
                "chunk_size": len(frames), "storage": "local", "included_frames": None}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, body, status=200, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                u = urlparse(self.path)
                q = parse_qs(u.query)
                u = u._replace(path=u.path.rstrip("/"))
                fake.requests.append(f"GET {u.path}")
                t = f"/api/tasks/{fake.task_id}"
                if u.path == "/api/server/about":
                    return self._send({"name": "CVAT", "description": "fake", "version": VERSION, "logo_url": "", "subtitle": ""})
                if u.path == t:
                    return self._send(fake._task())
                if u.path == f"{t}/data/meta":
                    return self._send(fake._meta())
                if u.path == f"{t}/data" and q.get("type") == ["chunk"]:
                    return self._send(fake.chunk, ctype="application/zip")
                if u.path == "/api/labels":
                    return self._send({"count": len(fake.labels), "next": None, "previous": None,
                                       "results": fake.labels})
                return self._send({"detail": f"not in the fake: {u.path}"}, status=404)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_PATCH(self):
                u = urlparse(self.path)
                u = u._replace(path=u.path.rstrip("/"))
                fake.requests.append(f"{self.command} {u.path}?{u.query}")
                if u.path == f"/api/tasks/{fake.task_id}/annotations":
                    fake.uploads.append(self._body())
                    return self._send({"version": 1, "tags": [], "shapes": [], "tracks": []})
                return self._send({"detail": "not in the fake"}, status=404)

            do_PUT = do_PATCH

        return Handler
