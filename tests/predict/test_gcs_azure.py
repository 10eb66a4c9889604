"""predict with ``gs://`` (gcsfs) and ``az://`` (adlfs) URLs, against real local servers started by the
fixtures (gcp-storage-emulator, Microsoft's Azurite): the objects are the files a local run writes, and a
re-run reads its records back from the store and redoes nothing.

The references are local runs of the same commands on the same files (as tests/predict/test_s3.py for
S3), and the store's objects are read back through each vendor's own SDK (google-cloud-storage,
azure-storage-blob), not through the fsspec file systems fcn-label uses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fcn_label.cli._common import run_cli
from support.remote_outputs import comparable, local_files, pictures
from support.stores import AZ_KEY
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
