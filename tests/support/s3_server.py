"""A real S3 server for the tests: moto in server mode on 127.0.0.1, in its own process group.

``s3_server`` (session scope) starts ``moto_server`` once and stops it by its process group at the
end; ``s3`` (per test) points the AWS variables at it (``AWS_ENDPOINT_URL``, dummy keys, us-east-1)
and hands out an :class:`S3` with a fresh bucket. Tests that need it skip, saying why, when
``moto_server`` or s3fs is not installed (``pip install "fcn-label[scale-test]"``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.servers import stop_group, wait_until_up

ENV = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto S3 server that lives as long as the test session."""
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.skip('moto_server not installed (pip install "fcn-label[scale-test]"): the S3 tests need a real '
                    "S3 server")
    pytest.importorskip("s3fs", reason='s3fs not installed (pip install "fcn-label[s3]")')
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=2), proc, log, "moto_server", 60,
                      poll=0.2)
        yield url
    finally:
        stop_group(proc, grace=10)


@dataclass
class S3:
    endpoint: str
    bucket: str

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def upload(self, local: Path, key: str) -> str:
        """Copy a local file or folder (hidden files included) to ``key``; return its URL."""
        fs = self.fs()
        local = Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for p in files:
            rel = "" if p == local else "/" + p.relative_to(local).as_posix()
            fs.put_file(str(p), f"{self.bucket}/{key}{rel}")
        return self.url(key)

    def download(self, key: str, dest: Path) -> Path:
        """Copy everything under ``key`` to ``dest`` (independently of fcn_label's own code)."""
        fs = self.fs()
        top = f"{self.bucket}/{key}".rstrip("/")
        if fs.isfile(top):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(top, str(dest))
            return dest
        for path in fs.find(top):
            target = dest / path[len(top) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        return dest

    def keys(self, key: str = "") -> list[str]:
        top = f"{self.bucket}/{key}".rstrip("/")
        return sorted(p[len(top) + 1:] for p in self.fs().find(top))


_count = [0]


@pytest.fixture
def s3(s3_server, monkeypatch):
    """AWS variables pointing at the session's moto server, and a fresh bucket for this test."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    _count[0] += 1
    bucket = f"test-{os.getpid()}-{_count[0]}"
    s = S3(s3_server, bucket)
    s.fs().mkdir(bucket)
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # an instance cached under other variables must not be reused
    return s
