"""Google Cloud Storage and Azure Blob servers for tests, on 127.0.0.1, each in its own process group:
the GCS side of ``gs://`` (gcsfs) and the Azure side of ``az://`` (adlfs), as :mod:`support.s3` is moto's.

Use the fixtures from a test module (``from support.stores import gcs, gcs_server, azure, azure_server,
store  # noqa: F401``):

* ``gcs_server`` (session): ``python -m gcp_storage_emulator start --in-memory`` (the pure-Python
  ``gcp-storage-emulator``), or a skip saying why (``pip install "fcn-label[scale-test]"``).
* ``azure_server`` (session): Microsoft's Azurite (``azurite-blob --inMemoryPersistence``), found through
  ``FCN_LABEL_AZURITE_BIN`` (``.ci/run`` installs it with npm into ``.azurite/``), ``.azurite/`` itself or
  ``PATH``; a skip saying why where it is not installed.
* ``gcs`` / ``azure`` (per test): a :class:`GcsBucket` / :class:`AzureContainer` with this test's own
  bucket or container, the variables a user of that store would set (``STORAGE_EMULATOR_HOST`` and
  fsspec's ``FSSPEC_GCS_TOKEN=anon``; ``AZURE_STORAGE_CONNECTION_STRING``) set in this process
  (monkeypatch) and in ``.env`` for subprocesses, and fsspec's cached file systems dropped so they
  pick them up.
* ``store``: either of the two, for tests parametrized over both (``@pytest.mark.parametrize("store",
  ["gcs", "azure"], indirect=True)``).

The tests' own reads and writes go through each vendor's SDK (google-cloud-storage, azure-storage-blob),
not through the fsspec file systems fcn-label uses, so a fault there cannot hide itself.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.s3 import free_port
from support.servers import stop_group, wait_until_up

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()

# Azurite's well-known development account (its documentation's, the same in every install). The tests
# assert the key appears in no output, report or object.
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def forget_clients() -> None:
    """Drop fsspec's cached GCS and Azure file systems (each keeps the endpoint and credentials it was made
    with)."""
    for module, cls in (("gcsfs", "GCSFileSystem"), ("adlfs", "AzureBlobFileSystem")):
        if module in sys.modules:
            getattr(sys.modules[module], cls).clear_instance_cache()


def _answers(url: str):
    """Any HTTP answer, an error status included, means the server is up (Azurite answers 403 unsigned)."""
    try:
        return urllib.request.urlopen(url, timeout=2).read()
    except urllib.error.HTTPError as e:
        return e.code


def _objects(files_of: Path) -> list[tuple[Path, str]]:
    return [(files_of, "")] if files_of.is_file() else \
        [(p, p.relative_to(files_of).as_posix()) for p in sorted(files_of.rglob("*")) if p.is_file()]


class _Bucket:
    """What the two stores' test handles share: URLs, uploading a folder, reading a prefix back."""

    scheme = ""
    name = ""
    env: dict[str, str] = {}

    def url(self, key: str = "") -> str:
        return f"{self.scheme}://{self.name}/{key}".rstrip("/")

    def upload(self, local: Path, prefix: str) -> str:
        """Every file under ``local`` (or ``local`` itself) put under ``prefix``; return its URL."""
        local = Path(local)
        for f, rel in _objects(local):
            self.put(f"{prefix.strip('/')}/{rel or f.name}" if local.is_dir() else prefix.strip("/"), f.read_bytes())
        return self.url(prefix.strip("/"))

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """key relative to ``prefix`` -> bytes, for every object under it."""
        raise NotImplementedError

    def download(self, prefix: str, dest: Path) -> Path:
        for rel, data in self.objects(prefix).items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        return dest


class GcsBucket(_Bucket):
    """A bucket on the GCS emulator; read and written with google-cloud-storage."""

    scheme = "gs"

    def __init__(self, endpoint: str, name: str):
        self.endpoint, self.name = endpoint, name
        self.env = _without(os.environ, "STORAGE_EMULATOR_HOST", "FSSPEC_GCS", "FSSPEC_GS") | gcs_variables(endpoint)

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def make(self, name: str | None = None) -> None:
        self.client().create_bucket(name or self.name)

    def put(self, key: str, data: bytes) -> None:
        self.client().bucket(self.name).blob(key).upload_from_string(data)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        pre = prefix.strip("/") + "/" if prefix.strip("/") else ""
        c = self.client()
        return {b.name[len(pre):]: b.download_as_bytes() for b in c.list_blobs(self.name, prefix=pre)}


class AzureContainer(_Bucket):
    """A container on Azurite; read and written with azure-storage-blob."""

    scheme = "az"

    def __init__(self, endpoint: str, name: str):
        self.endpoint, self.name = endpoint, name
        self.env = _without(os.environ, *_AZURE_VARIABLES) | azure_variables(endpoint)

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(connection_string(self.endpoint))

    def make(self, name: str | None = None) -> None:
        self.client().create_container(name or self.name)

    def put(self, key: str, data: bytes) -> None:
        self.client().get_blob_client(self.name, key).upload_blob(data, overwrite=True)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        pre = prefix.strip("/") + "/" if prefix.strip("/") else ""
        c = self.client().get_container_client(self.name)
        return {b.name[len(pre):]: c.download_blob(b.name).readall() for b in c.list_blobs(name_starts_with=pre)}


def gcs_variables(endpoint: str) -> dict[str, str]:
    """What a user of a GCS emulator sets: where it is (read by gcsfs and Google's own clients), and
    anonymous access through fsspec's configuration variables (``FSSPEC_<protocol>_<argument>``).
    ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs 2026.x asks Google's gRPC storage-control service
    for each bucket's layout first, which an emulator does not serve (a minute of retries per bucket)."""
    return {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


_AZURE_VARIABLES = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
                    "AZURE_STORAGE_TENANT_ID", "AZURE_STORAGE_ANON")


def connection_string(endpoint: str, key: str = AZ_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={endpoint}/{AZ_ACCOUNT};")


def azure_variables(endpoint: str) -> dict[str, str]:
    """The one variable adlfs (and Azure's own SDKs and CLI) read for an account: its connection string."""
    return {"AZURE_STORAGE_CONNECTION_STRING": connection_string(endpoint)}


def _without(env, *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def _start(cmd: list[str], log: Path, check_url: str, what: str, cwd: Path):
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    try:
        wait_until_up(lambda: _answers(check_url), proc, log, what, timeout=60, poll=0.2)
    except BaseException:
        stop_group(proc, grace=10)
        raise
    return proc


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """The endpoint of a GCS emulator for the whole session."""
    pytest.importorskip("gcp_storage_emulator", reason='gcp-storage-emulator not installed: '
                        'pip install "fcn-label[scale-test]"')
    with pytest.MonkeyPatch.context() as mp:
        # read when gcsfs is imported: set before fsspec first imports it for a gs:// URL
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        gcsfs = pytest.importorskip("gcsfs", reason='gcsfs not installed: pip install "fcn-label[gcs]"')
        pytest.importorskip("google.cloud.storage", reason="google-cloud-storage (comes with gcsfs) not installed")
        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
            pytest.skip("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set: its "
                        "bucket-layout calls (gRPC) hang against an emulator")
        root = tmp_path_factory.mktemp("gcs")
        port = free_port()
        proc = _start([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                       str(port), "--in-memory"], root / "gcs.log", f"http://127.0.0.1:{port}/storage/v1/b",
                      "gcp-storage-emulator", root)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_group(proc, grace=10)


def azurite_bin() -> str | None:
    for candidate in (os.environ.get("FCN_LABEL_AZURITE_BIN"), REPO / ".azurite/node_modules/.bin/azurite-blob",
                      shutil.which("azurite-blob")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory):
    """The blob endpoint of an Azurite server for the whole session (its account's URL is this +
    ``/devstoreaccount1``)."""
    exe = azurite_bin()
    if exe is None:
        pytest.skip("Azurite not installed: npm install azurite (.ci/run puts it in .azurite/), or set "
                    "FCN_LABEL_AZURITE_BIN to its azurite-blob")
    pytest.importorskip("adlfs", reason='adlfs not installed: pip install "fcn-label[azure]"')
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob (comes with adlfs) not installed")
    root = tmp_path_factory.mktemp("azurite")
    port = free_port()
    # in memory (nothing on disk; cwd is a temporary folder in case it writes anything), no telemetry,
    # and the newest API versions of the installed SDK accepted
    proc = _start([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
                   "--skipApiVersionCheck", "--loose", "--disableTelemetry"], root / "azurite.log",
                  f"http://127.0.0.1:{port}/{AZ_ACCOUNT}?comp=list", "azurite-blob", root)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc, grace=10)


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"  # 3-63 lower-case letters and digits: valid on both stores


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """A :class:`GcsBucket` with a fresh bucket, its variables set here and in ``.env``."""
    import fsspec.config

    for k, v in gcs_variables(gcs_server).items():
        monkeypatch.setenv(k, v)
    # fsspec reads FSSPEC_* once, when it is imported: as it would have from the variable at start-up
    monkeypatch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
    forget_clients()
    b = GcsBucket(gcs_server, _unique("bkt"))
    b.make()
    yield b
    forget_clients()


@pytest.fixture
def azure(azure_server, monkeypatch):
    """An :class:`AzureContainer` with a fresh container, its connection string set here and in ``.env``."""
    for k in _AZURE_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    for k, v in azure_variables(azure_server).items():
        monkeypatch.setenv(k, v)
    forget_clients()
    c = AzureContainer(azure_server, _unique("ctr"))
    c.make()
    yield c
    forget_clients()


@pytest.fixture
def store(request):
    """The ``gcs`` or ``azure`` fixture, by the parameter's name."""
    return request.getfixturevalue(request.param)
