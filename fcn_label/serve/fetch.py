"""Fetching a task's image the way Label Studio serves it, and nothing the backend should not fetch.

- ``/data/upload/...``, ``/data/local-files/?d=...`` and other paths on Label Studio: from
  ``LABEL_STUDIO_URL`` with its API key (``Authorization: Token KEY``; a personal access token,
  which is a JWT, is first exchanged for an access token as label-studio-sdk does).
- ``s3://``, ``gs://``, ``azure-blob://`` URIs of a cloud storage: Label Studio's presign endpoint
  for the task, which redirects to a presigned URL; that URL is fetched without the API key.
- ``http(s)://`` URLs on Label Studio's own origin (with the key), on an allow-listed host
  (default: none besides Label Studio's), or presigned cloud URLs (an S3, GCS or Azure signature
  in the query) over https to a public address.

Anyone who can reach the backend can make it fetch a URL, so every other URL, and every redirect
that leaves these rules, is refused: no internal address is fetched for them. Sizes are bounded
before decoding: bytes while reading, pixels from the image header.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..images import image_size, read_image

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi")
# query parameters that only a presigned URL carries (S3 v4 and v2, GCS v4 and v2, Azure SAS)
PRESIGN_PARAMS = ("x-amz-signature", "signature", "x-goog-signature", "sig")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MAX_REDIRECTS = 3


class FetchError(InputError):
    """A task's image could not be used; ``status`` is the HTTP status the backend answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by :class:`ImageFetcher` itself, each one checked, and without the API key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _origin(u: urllib.parse.ParseResult) -> tuple[str, str, int | None]:
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return u.scheme, (u.hostname or "").lower(), port


def _public(host: str) -> bool:
    """Every address ``host`` resolves to is a global one (no loopback, private, link-local, reserved)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_global for i in infos)


class ImageFetcher:
    """Fetches and decodes task images under the rules above; thread-safe."""

    def __init__(self, label_studio_url: str | None = None, api_key: str | None = None,
                 allow_hosts: list[str] | tuple[str, ...] = (), max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = 30.0, tmpdir: str | Path | None = None):
        self.ls = urllib.parse.urlparse(label_studio_url.rstrip("/")) if label_studio_url else None
        if self.ls is not None and (self.ls.scheme not in ("http", "https") or not self.ls.hostname):
            raise InputError(f"Label Studio URL {label_studio_url!r}: expected http(s)://HOST[:PORT]")
        self.ls_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.api_key = api_key
        self.allow_hosts = {h.lower() for h in allow_hosts}
        self.max_bytes, self.max_pixels, self.timeout = max_bytes, max_pixels, timeout
        self.tmpdir = tmpdir
        self._access: str | None = None  # the short-lived token a personal access token is exchanged for
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def use_token(self, token: str | None) -> None:
        """The token Label Studio sent with /setup, when none was configured."""
        if token and not self.api_key:
            self.api_key = token

    # -- Label Studio API -------------------------------------------------------
    def _auth_header(self, refresh: bool = False) -> dict[str, str]:
        key = self.api_key
        if not key:
            return {}
        if key.count(".") != 2:  # a legacy token
            return {"Authorization": f"Token {key}"}
        with self._lock:
            if self._access is None or refresh:
                req = urllib.request.Request(self.ls_url + "/api/token/refresh", data=json.dumps({"refresh": key}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
                try:
                    with self._opener.open(req, timeout=self.timeout) as r:
                        self._access = json.loads(r.read(1 << 20))["access"]
                except (OSError, ValueError, KeyError) as e:
                    raise FetchError(f"Label Studio at {self.ls_url} refused the API key ({e}); check "
                                     "LABEL_STUDIO_API_KEY", 502) from None
            return {"Authorization": f"Bearer {self._access}"}

    def api_json(self, path: str, max_bytes: int = 512 * 1024 * 1024):
        """GET a Label Studio API path (``/api/...``) as JSON, with the API key."""
        if not self.ls_url:
            raise FetchError("LABEL_STUDIO_URL is not set: the backend cannot read from Label Studio's API", 400)
        data = self._get(self.ls_url + path, True, max_bytes, what=path)
        try:
            return json.loads(data)
        except ValueError:
            raise FetchError(f"Label Studio's {path} did not answer JSON", 502) from None

    # -- images ----------------------------------------------------------------
    def _is_ls(self, u: urllib.parse.ParseResult) -> bool:
        return self.ls is not None and _origin(u) == _origin(self.ls)

    def _check_plain(self, u: urllib.parse.ParseResult, url: str) -> None:
        """An http(s) URL off Label Studio: allow-listed host, or presigned over https to a public address."""
        host = (u.hostname or "").lower()
        if host in self.allow_hosts:
            return
        query = {k.lower() for k in urllib.parse.parse_qs(u.query)}
        if u.scheme == "https" and query & set(PRESIGN_PARAMS) and _public(host):
            return
        raise FetchError(f"{url}: host {host!r} is not Label Studio's and not allow-listed; add "
                         f"--allow-host {host} if the backend may fetch from it", 403)

    def resolve(self, url: str, task_id: object = None) -> tuple[str, bool]:
        """(the URL to fetch, whether it goes to Label Studio with the API key)."""
        if not isinstance(url, str) or not url.strip():
            raise FetchError("image URL missing or not a string", 400)
        u = urllib.parse.urlparse(url)
        if not u.scheme and url.startswith("/"):
            if not self.ls_url:
                raise FetchError(f"{url}: a Label Studio path, but LABEL_STUDIO_URL is not set; start the backend "
                                 "with --label-studio-url URL (and LABEL_STUDIO_API_KEY)", 400)
            return self.ls_url + url, True
        if u.scheme in CLOUD_SCHEMES:
            if not self.ls_url or task_id is None:
                raise FetchError(f"{url}: a cloud storage URI needs LABEL_STUDIO_URL to presign it", 400)
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={urllib.parse.quote(fileuri)}", True
        if u.scheme in ("http", "https") and u.hostname:
            if self._is_ls(u):
                return url, True
            self._check_plain(u, url)
            return url, False
        raise FetchError(f"{url}: unsupported image URL (expected a Label Studio path, an http(s) URL or a "
                         f"cloud storage URI: {', '.join(CLOUD_SCHEMES)})", 400)

    def _get(self, url: str, auth: bool, max_bytes: int, what: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            for attempt in (0, 1):
                headers = {"User-Agent": "fcn-label-serve"}
                if auth:
                    headers |= self._auth_header(refresh=attempt == 1)
                req = urllib.request.Request(url, headers=headers)
                try:
                    with self._opener.open(req, timeout=self.timeout) as r:
                        n = r.headers.get("Content-Length")
                        if n and n.isdigit() and int(n) > max_bytes:
                            raise FetchError(f"{what}: {int(n):,} bytes is over the limit of {max_bytes:,} "
                                             "(--max-image-bytes)", 413)
                        data = r.read(max_bytes + 1)
                        if len(data) > max_bytes:
                            raise FetchError(f"{what}: over the limit of {max_bytes:,} bytes (--max-image-bytes)", 413)
                        return data
                except urllib.error.HTTPError as e:
                    if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                        nxt = urllib.parse.urljoin(url, e.headers["Location"])
                        break
                    if e.code == 401 and auth and attempt == 0 and self.api_key and self.api_key.count(".") == 2:
                        continue  # the access token expired: exchange the key again
                    status = 404 if e.code == 404 else 502
                    hint = "; check LABEL_STUDIO_API_KEY" if e.code in (401, 403) and auth else ""
                    raise FetchError(f"{what}: the server answered {e.code} {e.reason}{hint}", status) from None
                except FetchError:
                    raise
                except (OSError, ValueError) as e:
                    reason = getattr(e, "reason", e)
                    raise FetchError(f"{what}: cannot fetch ({reason})", 502) from None
            else:
                raise FetchError(f"{what}: the server answered 401 Unauthorized; check LABEL_STUDIO_API_KEY", 502)
            # a redirect: to Label Studio again (keeps the key) or elsewhere by the plain rules, without the key
            v = urllib.parse.urlparse(nxt)
            if v.scheme not in ("http", "https") or not v.hostname:
                raise FetchError(f"{what}: redirected to {nxt!r}, which is not an http(s) URL", 502)
            if not self._is_ls(v):
                self._check_plain(v, nxt)
                auth = False
            url = nxt
        raise FetchError(f"{what}: more than {MAX_REDIRECTS} redirects", 502)

    def fetch_bytes(self, url: str, task_id: object = None) -> bytes:
        target, auth = self.resolve(url, task_id)
        return self._get(target, auth, self.max_bytes, what=url)

    def fetch(self, url: str, task_id: object = None) -> np.ndarray:
        """The RGB uint8 array of the image at ``url`` (the task's, for presigning cloud URIs)."""
        data = self.fetch_bytes(url, task_id)
        fd, tmp = tempfile.mkstemp(prefix=".fcn-label-serve-", suffix=".img", dir=self.tmpdir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                w, h = image_size(tmp, max_pixels=1 << 62)
            except InputError as e:
                raise FetchError(str(e).replace(tmp, url), 422) from None
            if w * h > self.max_pixels:
                raise FetchError(f"{url}: {w}x{h} pixels is over the limit of {self.max_pixels:,} (--max-pixels)", 413)
            try:
                return read_image(tmp, self.max_pixels)
            except InputError as e:
                raise FetchError(str(e).replace(tmp, url), 422) from None
        finally:
            os.unlink(tmp)
