"""predict, evaluate and export with ``gs://`` (gcsfs) and ``az://`` (adlfs) URLs, against real local servers
started by the fixtures (gcp-storage-emulator, Microsoft's Azurite): the objects are the files a local run
writes, a re-run reads its records back from the store and redoes nothing, evaluate and export reading the
store write what they write locally, and a store that cannot be used is one line, exit 2, before any work,
never showing the account key.

The references are local runs of the same commands on the same files (as tests/predict/test_s3.py for
S3), and the store's objects are read back through each vendor's own SDK (google-cloud-storage,
azure-storage-blob), not through the fsspec file systems fcn-label uses.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fcn_label.cli._common import run_cli
from support.export_folder import run_cli as run_verb
from support.remote_outputs import comparable, local_files, pictures
from support.review_folder import run_predict
from support.s3 import free_port
from support.stores import AZ_KEY, connection_string, forget_clients
from support.stores import azure, azure_server, gcs, gcs_server, store  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]
FAST = ("-q", "--parallel", "workers=0,procs=1")
BOTH = pytest.mark.parametrize("store", ["gcs", "azure"], indirect=True)


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@BOTH
def test_local_in_store_out_writes_the_files_of_a_local_run_and_a_rerun_skips_all(tmp_path, store, capsys):
    src = pictures(tmp_path / "in")
    code, _, _ = cli(capsys, "predict", src, "--out", tmp_path / "local", "--overlay", "--probs", *FAST)
    assert code == 1  # broken.png
    code, out, err = cli(capsys, "predict", src, "--out", store.url("out"), "--overlay", "--probs", *FAST)
    assert code == 1 and "Traceback" not in err, err
    objects = store.objects("out")
    assert any(k.startswith(".fcn-label/records/") and k.endswith("-000001.jsonl") for k in objects)
    want, got = comparable(local_files(tmp_path / "local")), comparable(objects)
    assert sorted(got) == sorted(want)
    assert {"img00.png", "sub/img01.png", "overlays/img00.jpg", "confidence/sub/img01.png"} <= set(got)
    for name in want:
        assert got[name] == want[name], name
    assert not any(AZ_KEY.encode() in data for data in objects.values()) and AZ_KEY not in out + err

    # a re-run reads the records back from the store: nothing is redone, nothing changes
    code, out, err = cli(capsys, "predict", src, "--out", store.url("out"), *FAST)
    assert code == 1 and "done 0, skipped 6" in err and "failed 1" in err, err
    assert comparable(store.objects("out")) == got


@BOTH
def test_store_in_store_out_from_the_variables_alone(tmp_path, store, capsys):
    """A new process given only the variables a user sets (nothing patched in it), reading a prefix with
    two forked decoding workers (each fetches through its own client): the files of a local run, the
    inputs named by their URLs."""
    src = pictures(tmp_path / "in")
    store.upload(src, "in")
    assert cli(capsys, "predict", src, "--out", tmp_path / "local", *FAST)[0] == 1
    # one thread per network, as in this process (conftest): predictions.json's 6th decimals agree
    env = dict(store.env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "fcn_label", "predict", store.url("in"), "--out", store.url("out"),
                        "-q", "--parallel", "workers=2,procs=1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{store.url('in')}/broken.png: not a recognised image format" in r.stderr
    assert AZ_KEY not in r.stdout + r.stderr
    want = comparable(local_files(tmp_path / "local"), str(src), store.url("in"))
    assert comparable(store.objects("out")) == want and "sub/img01.png" in want


def test_azure_container_at_account_urls_keep_the_container_wherever_shown(tmp_path, azure, capsys):
    """``abfs://container@account.dfs.core.windows.net/prefix`` (adlfs's other URL form): the ``container@``
    is no credential, and without it a message or a predictions.csv row would name no container."""
    url = f"abfs://{azure.name}@devstoreaccount1.dfs.core.windows.net"
    src = pictures(tmp_path / "in", n=2, broken=False)
    assert cli(capsys, "predict", src, "--out", tmp_path / "local", *FAST)[0] == 0
    code, _, err = cli(capsys, "predict", src, "--out", f"{url}/out", *FAST)
    assert code == 0 and f"outputs in {url}/out" in err, err
    assert comparable(azure.objects("out")) == comparable(local_files(tmp_path / "local"))
    code, _, err = cli(capsys, "predict", f"{url}/out/img00.png", "--out", tmp_path / "back", *FAST)
    assert code == 0, err
    rows = (tmp_path / "back" / "predictions.csv").read_text().splitlines()
    assert rows[1].startswith(f"{url}/out/img00.png,"), rows


def one_line_exit_2(capsys, *args, must: str) -> str:
    code, out, err = cli(capsys, "predict", *args, *FAST)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert must in lines[0], lines[0]
    assert AZ_KEY not in out + err
    return lines[0]


def _no_backoff(monkeypatch) -> None:
    """Keep each client's retries of a refused connection but not their back-off waits (gcsfs: six tries,
    about 30 s of sleeps a request; Azure's SDK: three retries, about a minute): the store that does not
    answer is then reported in seconds, through the same exceptions."""
    import asyncio
    import types

    import gcsfs.retry
    from azure.storage.blob.aio import ExponentialRetry

    async def no_wait(_seconds, *a, **k):
        await asyncio.sleep(0)

    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=no_wait))
    monkeypatch.setattr(ExponentialRetry, "get_backoff_time", lambda self, settings: 0)


@BOTH
def test_store_errors_are_one_line_exit_2_before_any_work(tmp_path, store, capsys, monkeypatch, caplog):
    src = pictures(tmp_path / "in", n=2, broken=False)
    store.upload(src, "in")
    kind = {"gs": "bucket", "az": "container"}[store.scheme]
    missing = f"{store.scheme}://absent{free_port()}"  # not "nosuchbucket": that is S3's error code
    name = missing.split("://")[1]
    line = one_line_exit_2(capsys, src, "--out", f"{missing}/out", must=f"no such {kind} '{name}'; create it")
    assert line.startswith(f"error: --out {missing}/out: ")
    one_line_exit_2(capsys, f"{missing}/in", "--out", tmp_path / "o1", must=f"no such {kind} '{name}'")
    assert not (tmp_path / "o1").exists()

    # the endpoint does not answer (nothing listens on that port)
    dead = f"http://127.0.0.1:{free_port()}"
    if store.scheme == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
    else:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(dead))
    forget_clients()
    _no_backoff(monkeypatch)
    for args, what in (((src, "--out", store.url("out")), "--out"), ((store.url("in"), "--out", tmp_path / "o2"),
                                                                     "input")):
        line = one_line_exit_2(capsys, *args, must=f"{what} {args[0 if what == 'input' else 2]}: the store does not "
                                                   f"answer at {dead}")
        assert ("STORAGE_EMULATOR_HOST" if store.scheme == "gs" else "AZURE_STORAGE_CONNECTION_STRING") in line
    assert not (tmp_path / "o2").exists()
    # gcsfs logs each failed request with its traceback; with no logging set up (the CLI sets none) Python
    # would print it above the one line: such records are dropped at gcsfs's logger, before they reach any
    # handler (here pytest's)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_azure_credentials_missing_or_refused_are_one_line(tmp_path, azure, capsys, monkeypatch):
    """No account configured at all (adlfs refuses to make the file system): a missing credential, not a
    missing extra; a key Azurite does not accept: refused, the key never shown."""
    src = pictures(tmp_path / "in", n=1, broken=False)
    azure.upload(src, "in")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    forget_clients()
    one_line_exit_2(capsys, src, "--out", azure.url("out"), must=f"{azure.url('out')}: no credentials for az://")
    one_line_exit_2(capsys, azure.url("in"), "--out", tmp_path / "o", must=f"{azure.url('in')}: no credentials")

    import base64

    wrong = base64.b64encode(b"not the account key, 64 bytes long ......................").decode()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(azure.endpoint, key=wrong))
    forget_clients()
    for args in ((src, "--out", azure.url("out")), (azure.url("in"), "--out", tmp_path / "o")):
        line = one_line_exit_2(capsys, *args, must="the store refused the credentials")
        assert wrong not in line
    assert not (tmp_path / "o").exists() and azure.objects("out") == {}


def test_gcs_unauthenticated_is_no_credentials():
    """What gcsfs raises for GCS's answer to a request without credentials (401, the body GCS sends; the
    emulator checks no credentials, so gcsfs's own translation of that answer stands in for the server)."""
    import json

    from gcsfs.retry import validate_response

    from fcn_label.storage import explain

    body = json.dumps({"error": {"code": 401, "message": "Anonymous caller does not have storage.objects.list "
                                 "access to the Google Cloud Storage bucket."}}).encode()
    with pytest.raises(Exception) as e:
        validate_response(401, body, "https://storage.googleapis.com/storage/v1/b/photos/o")
    line = explain("gs://photos/in", e.value, "listing")
    assert line.startswith("gs://photos/in: no credentials for gs://") and "GOOGLE_APPLICATION_CREDENTIALS" in line


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A real predict folder (tiny model) over photos in sub-folders, with ground truth: root/photos,
    root/gt, root/pred."""
    root = tmp_path_factory.mktemp("predicted")
    run_predict(root, probs=False, gt=True, n=4)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@BOTH
def test_evaluate_and_export_reading_the_store_write_the_local_runs_files(tmp_path, store, predicted):
    """evaluate --pred/--gt from the store to the store, and export --format cvat from the store: the
    local runs' files, with the local folders named by their URLs."""
    pred, gt = store.upload(predicted / "pred", "pred"), store.upload(predicted / "gt", "gt")
    ref = run_verb("evaluate", "--gt", str(predicted / "gt"), "--pred", str(predicted / "pred"),
                   "--out", str(tmp_path / "eval"), "-q")
    r = run_verb("evaluate", "--gt", gt, "--pred", pred, "--out", store.url("eval"), "-q")
    assert ref.returncode == r.returncode == 0, (ref.stderr, r.stderr)
    assert r.stdout == ref.stdout and AZ_KEY not in r.stdout + r.stderr
    got, want = _files(store.download("eval", tmp_path / "got-eval")), _files(tmp_path / "eval")
    assert sorted(got) == sorted(want) and {"per_image.csv", "summary.csv"} <= set(want), sorted(want)
    assert store.url("pred").encode() in got["per_image.csv"]
    for name, data in want.items():
        for folder in ("pred", "gt"):
            data = data.replace(f"{predicted}/{folder}".encode(), store.url(folder).encode())
        assert got[name] == data, name

    ref = run_verb("export", str(predicted / "pred"), "--format", "cvat", "--out", str(tmp_path / "cvat"))
    r = run_verb("export", pred, "--format", "cvat", "--out", str(tmp_path / "cvat-from-store"))
    assert ref.returncode == r.returncode == 0, (ref.stderr, r.stderr)
    got, want = _files(tmp_path / "cvat-from-store"), _files(tmp_path / "cvat")
    assert sorted(got) == sorted(want) and want
    for name, data in want.items():  # the manifest names the store's prefix, not the local copy made of it
        if name.endswith(".zip"):  # its members (the archive carries the files' times)
            assert members(got[name]) == {n: b.replace(f"{predicted}/pred".encode(), pred.encode())
                                          for n, b in members(data).items()}, name
        else:
            assert got[name] == data.replace(f"{predicted}/pred".encode(), pred.encode()), name
    assert b"fcn-label-stage" not in b"".join(got.values()) + b"".join(members(got["cvat.zip"]).values())


def members(b: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(b)) as z:
        return {n: z.read(n) for n in z.namelist()}
