"""A real S3 server for tests: moto in server mode on 127.0.0.1, in its own process group.

Use the fixtures from a test module (``from support.s3 import s3, s3_server  # noqa: F401``):

* ``s3_server`` (session): starts ``moto_server -H 127.0.0.1 -p PORT`` once, or skips with the reason when
  moto's server is not installed (``pip install "fcn-label[scale-test]"``); stopped with its group.
* ``s3`` (per test): a :class:`MotoS3` with this test's own bucket, the ``AWS_*`` variables set in this
  process (monkeypatch) and in ``s3.env`` for subprocesses, and fsspec's cached S3 clients dropped so
  they pick the variables up.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import shutil
import socket
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.servers import stop_group, wait_until_up

_buckets = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECRET = "s3cr3t-must-never-be-shown"  # distinctive: tests assert it appears in no output


def credentials(endpoint: str, key: str = "testing", secret: str = SECRET) -> dict[str, str]:
    """The variables every S3 client (boto3, s3fs) reads; never a real account's.
    Shared credential and config files are pointed away, so a developer's own profile cannot leak in."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull}


def forget_clients() -> None:
    """Drop fsspec's cached S3 file systems (they keep the credentials and endpoint they were made with)."""
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass


class MotoS3:
    """One moto server and a test's bucket on it."""

    def __init__(self, endpoint: str, bucket: str):
        self.endpoint, self.bucket = endpoint, bucket
        self.env = dict(os.environ, **credentials(endpoint))

    def client(self, **creds):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=creds.get("key", "testing"),
                            aws_secret_access_key=creds.get("secret", SECRET))

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload(self, local: Path, prefix: str) -> list[str]:
        """Every file under ``local`` (or ``local`` itself) put under ``prefix``; returns the keys."""
        c, keys = self.client(), []
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            key = f"{prefix.strip('/')}/{f.name if local.is_file() else f.relative_to(local).as_posix()}"
            c.put_object(Bucket=self.bucket, Key=key, Body=f.read_bytes())
            keys.append(key)
        return keys

    def upload_to(self, local: Path, key: str) -> str:
        """Copy a local file to ``key``, or a folder (hidden files included) under it; return its URL."""
        c, local = self.client(), Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for p in files:
            rel = "" if p == local else "/" + p.relative_to(local).as_posix()
            c.put_object(Bucket=self.bucket, Key=f"{key}{rel}", Body=p.read_bytes())
        return self.url(key)

    def fs(self):
        """An s3fs file system of its own (not fcn_label's), for the tests' independent reads."""
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def download(self, key: str, dest: Path) -> Path:
        """Copy the object ``key``, or everything under it, to ``dest``."""
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

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=key)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """key relative to ``prefix`` -> bytes, for every object under it."""
        c, out = self.client(), {}
        pre = prefix.strip("/") + "/" if prefix.strip("/") else ""
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=pre):
            for o in page.get("Contents", []):
                out[o["Key"][len(pre):]] = c.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
        return out

    @contextmanager
    def enforce_auth(self, policy: dict):
        """Yield the (key, secret) of a new IAM user holding ``policy``, with moto checking every request's
        signature and permissions meanwhile (moto's INITIAL_NO_AUTH_ACTION_COUNT, reset through its
        /moto-api/reset-auth endpoint); the server is open again afterwards."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key=SECRET)
        name = f"user{next(_buckets)}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=name)["AccessKey"]
        self._reset_auth(b"0")
        try:
            yield k["AccessKeyId"], k["SecretAccessKey"]
        finally:
            self._reset_auth(b"inf")

    def _reset_auth(self, count: bytes) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count, method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto S3 server for the whole session."""
    exe = shutil.which("moto_server") or (Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        pytest.skip('moto_server not installed: pip install "fcn-label[scale-test]" (moto[server], s3fs)')
    pytest.importorskip("s3fs", reason='s3fs not installed: pip install "fcn-label[s3]"')
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read(), proc, log,
                      "moto_server", timeout=60, poll=0.2)
        yield endpoint
    finally:
        stop_group(proc, grace=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A :class:`MotoS3` with a fresh bucket, its credentials set in this process and in ``.env``."""
    for k, v in credentials(s3_server).items():
        monkeypatch.setenv(k, v)
    forget_clients()
    m = MotoS3(s3_server, f"bkt{os.getpid()}x{next(_buckets)}")
    m.make_bucket(m.bucket)
    yield m
    forget_clients()
