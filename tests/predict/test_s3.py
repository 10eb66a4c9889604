"""predict with inputs and --out on a real S3 server (moto, started by the ``s3`` fixture): the objects are
the files a local run writes, a kill -9 and a re-run end with the same objects as one run, two shards
writing one prefix lose nothing, and a store that cannot be used is one line, exit 2, before any work.

The reference is always a local run of the same command on the same pictures: masks, overlays and
predictions.json must be the same bytes; predictions.csv and failures.csv too once the input paths
(local path vs URL) are mapped and the per-image timing column is dropped.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcn_label.cli._common import run_cli
from support.remote_outputs import comparable, local_files, pictures
from support.s3 import forget_clients, free_port, s3, s3_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]
FAST = ("-q", "--parallel", "workers=0,procs=1")
# One image per forward pass where runs that split the work differently are compared byte for byte: the
# masks do not depend on the batch, but a confidence's 6th decimal (predictions.json's scores) can.
ONE = ("--batch-size", "1")
SECRET = "fcn-label-test-secret-0001"


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_s3_in_s3_out_writes_the_files_of_a_local_run(tmp_path, s3, capsys, monkeypatch):
    """A prefix walked like a folder, the outputs as objects; no credential anywhere in what is written."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any secret while it does not check
    forget_clients()
    src = pictures(tmp_path / "in")
    s3.upload(src, "in")
    code, _, err_local = cli(capsys, "predict", src, "--out", tmp_path / "local", "--overlay", "--probs", *FAST)
    assert code == 1  # broken.png
    # two decoding workers (forked: each fetches through its own S3 client)
    code, out, err = cli(capsys, "predict", s3.url("in"), "--out", s3.url("out"), "--overlay", "--probs", "-q",
                         "--parallel", "workers=2,procs=1")
    assert code == 1 and "Traceback" not in err
    assert f"{s3.url('in')}/broken.png: not a recognised image format" in err
    objects = s3.objects("out")
    assert any(k.startswith(".fcn-label/records/") and k.endswith("-000001.jsonl") for k in objects)
    want = comparable(local_files(tmp_path / "local"), str(src), s3.url("in"))
    got = comparable(objects)
    assert sorted(got) == sorted(want)
    assert {"img00.png", "sub/img01.png", "overlays/img00.jpg", "confidence/sub/img01.png"} <= set(got)
    for name in want:
        assert got[name] == want[name], name
    assert not any(SECRET.encode() in data for data in objects.values())
    assert SECRET not in out + err

    # a re-run trusts the records: nothing is redone
    code, out, err = cli(capsys, "predict", s3.url("in"), "--out", s3.url("out"), *FAST)
    assert "done 0, skipped 6" in err


def test_mixed_local_and_remote_in_and_out(tmp_path, s3, capsys):
    """local in -> s3 out, and s3 in -> local out: the same files as local -> local."""
    src = pictures(tmp_path / "in", broken=False)
    s3.upload(src, "pics")
    assert cli(capsys, "predict", src, "--out", tmp_path / "local", *FAST)[0] == 0
    assert cli(capsys, "predict", src, "--out", s3.url("fromlocal"), *FAST)[0] == 0
    assert cli(capsys, "predict", s3.url("pics") + "/", "--out", tmp_path / "fromremote", *FAST)[0] == 0
    want = comparable(local_files(tmp_path / "local"))
    assert comparable(s3.objects("fromlocal")) == want
    assert comparable(local_files(tmp_path / "fromremote"), s3.url("pics"), str(src)) == want

    # a local list may name objects by URL: named by bucket and key, as an absolute local path is by its parts
    (tmp_path / "list.txt").write_text(f"{s3.url('pics/img00.png')}\n{src / 'sub' / 'img01.png'}\n")
    assert cli(capsys, "predict", tmp_path / "list.txt", "--out", tmp_path / "fromlist", *FAST)[0] == 0
    assert (tmp_path / "fromlist" / s3.bucket / "pics" / "img00.png").read_bytes() == want["img00.png"]


def test_list_file_missing_and_damaged_objects_are_one_row_each(tmp_path, s3, capsys):
    """A list of keys (relative to the list's folder) and full URLs: a missing and a damaged object are
    one failures.csv row each, naming the URL; the rest is done."""
    src = pictures(tmp_path / "in")
    s3.upload(src, "in")
    s3.put("in/list.txt", (f"img00.png\nsub/img01.png\nmissing.png\nbroken.png\n{s3.url('in/img02.png')}\n"
                           "# a comment\nimg04.png masks/img04.png\n").encode())
    code, _, err = cli(capsys, "predict", s3.url("in/list.txt"), "--out", s3.url("out"), *FAST)
    assert code == 1 and "done 4" in err and "failed 2" in err and "Traceback" not in err
    objects = s3.objects("out")
    assert {"img00.png", "sub/img01.png", "img02.png", "img04.png"} <= set(objects)
    rows = list(csv.DictReader(io.StringIO(objects["failures.csv"].decode())))
    assert [(r["path"], r["stage"]) for r in rows] == [(s3.url("in/missing.png"), "decode"),
                                                       (s3.url("in/broken.png"), "decode")]
    assert rows[0]["reason"].startswith(f"{s3.url('in/missing.png')}: not found")
    assert rows[1]["reason"].startswith(f"{s3.url('in/broken.png')}: not a recognised image format")
    preds = list(csv.DictReader(io.StringIO(objects["predictions.csv"].decode())))
    assert [r["path"] for r in preds] == [s3.url("in/img00.png"), s3.url("in/sub/img01.png"),
                                          s3.url("in/img02.png"), s3.url("in/img04.png")]


def test_an_object_that_vanishes_mid_job_is_one_row(tmp_path, s3, capsys, monkeypatch):
    """Listed, then deleted before it is fetched: one failures row, the others done."""
    import importlib

    cli_predict = importlib.import_module("fcn_label.cli.predict")
    src = pictures(tmp_path / "in", broken=False)
    s3.upload(src, "in")
    real = cli_predict.discover

    def discover_then_delete(*a, **k):
        found = real(*a, **k)
        s3.delete("in/sub/img03.png")
        return found

    monkeypatch.setattr(cli_predict, "discover", discover_then_delete)
    code, _, err = cli(capsys, "predict", s3.url("in"), "--out", s3.url("out"), *FAST)
    assert code == 1 and "done 5" in err and "failed 1" in err
    rows = list(csv.DictReader(io.StringIO(s3.objects("out")["failures.csv"].decode())))
    assert len(rows) == 1 and rows[0]["path"] == s3.url("in/sub/img03.png") and "not found" in rows[0]["reason"]


def _predict_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "fcn_label", "predict", *map(str, args)]


def _env(s3, **extra) -> dict[str, str]:
    # one thread per network, as in this process (conftest) and predict's forked children: a confidence's
    # 6th decimal can differ between thread counts, which would make predictions.json's scores differ
    return dict(s3.env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def test_kill_9_mid_job_then_rerun_gives_the_objects_of_one_run(tmp_path, s3, capsys):
    """The writer is killed after its first record segments were put: the re-run redoes the rest (and any
    image whose buffered record was lost) and ends with the same objects as an uninterrupted run."""
    src = pictures(tmp_path / "in", n=16, big=True)
    s3.upload(src, "in")
    assert cli(capsys, "predict", s3.url("in"), "--out", s3.url("once"), *FAST, *ONE)[0] == 1
    env = _env(s3, FCN_LABEL_SEGMENT_LINES="2")
    proc = subprocess.Popen(_predict_cmd(s3.url("in"), "--out", s3.url("killed"), *FAST, *ONE), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        c = s3.client()
        while time.monotonic() < deadline and proc.poll() is None:
            keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3.bucket, Prefix="killed/.fcn-label/records/")
                    .get("Contents", [])]
            if len(keys) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed: " + proc.stderr.read().decode()[-500:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    import tempfile

    left = list(Path(tempfile.gettempdir()).glob(f"fcn-label-mirror.*~{proc.pid}.*"))
    assert left, "the killed run's local mirror of the records"
    mid = s3.objects("killed")
    assert "predictions.csv" not in mid and len([k for k in mid if k.endswith(".png") and k[0] != "."]) < 16
    r = subprocess.run(_predict_cmd(s3.url("in"), "--out", s3.url("killed"), *FAST, *ONE), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "skipped" in r.stderr and "skipped 0" not in r.stderr, r.stderr[-1000:]
    assert comparable(s3.objects("killed")) == comparable(s3.objects("once"))
    assert not any(p.exists() for p in left)  # the re-run removed what the killed run left on this machine


def test_two_shards_into_one_prefix_lose_nothing(tmp_path, s3, capsys):
    """--shard 0/2 and 1/2 at once, one prefix: every record, and the reports of the last to finish list
    every image (the re-scan rule, no lock). Shard 0 writes from two forked encoding processes (their
    buffered segments are put when the pool ends them), shard 1 from forked inference processes (the
    store is re-made in each child: s3fs is not fork-safe)."""
    src = pictures(tmp_path / "in", n=10)
    s3.upload(src, "in")
    assert cli(capsys, "predict", s3.url("in"), "--out", s3.url("once"), *FAST, *ONE)[0] == 1
    env = _env(s3, FCN_LABEL_SEGMENT_LINES="1")
    parallel = ["workers=0,procs=1,encoders=2", "workers=0,procs=2"]
    procs = [subprocess.Popen(_predict_cmd(s3.url("in"), "--out", s3.url("sharded"), "--shard", f"{k}/2", "-q",
                                           "--parallel", parallel[k], *ONE),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
             for k in range(2)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert sorted(codes) == [0, 1], [p.stderr.read().decode()[-800:] for p in procs]  # broken.png is in one shard
    assert comparable(s3.objects("sharded")) == comparable(s3.objects("once"))


def test_object_urls_never_show_credentials_and_pickle_whole():
    import pickle

    from fcn_label.storage import ObjectUrl, open_store

    u = ObjectUrl("https://user:pw@example.com/a/b.png?X-Amz-Signature=abc")
    assert str(u) == "https://example.com/a/b.png" and f"{u}" == str(u) and "pw" not in repr(u)
    assert u.full == "https://user:pw@example.com/a/b.png?X-Amz-Signature=abc"
    assert pickle.loads(pickle.dumps(u)).full == u.full
    store = pickle.loads(pickle.dumps(open_store("memory://fcn-label-test/x")))
    store.write_bytes("k", b"1")
    assert store.read_bytes("k") == b"1" and store.url == "memory://fcn-label-test/x"


def test_a_failed_multipart_upload_is_explained_by_its_own_error_not_the_aborts():
    """The chain s3fs raised when an S3 server (s3rver, with a 7.4 GB predictions.json) failed
    CompleteMultipartUpload and then refused the abort: the abort's MethodNotAllowed arrives as a
    PermissionError, which alone would read as 'access denied'."""
    from fcn_label.storage import explain

    def upload():
        try:
            raise OSError(121, "We encountered an internal error. Please try again.")
        except OSError:
            try:
                raise RuntimeError("An error occurred (MethodNotAllowed) when calling the AbortMultipartUpload "
                                   "operation: The specified method is not allowed against this resource.")
            except RuntimeError as abort:
                raise PermissionError(1, "The specified method is not allowed against this resource.") from abort

    with pytest.raises(PermissionError) as e:
        upload()
    line = explain("s3://b/out", e.value, "writing the reports")
    assert line == ("s3://b/out: the store failed while writing the reports (OSError: [Errno 121] We encountered an "
                    "internal error. Please try again.); try again later"), line
    plain = PermissionError(1, "Access Denied")  # a real denial keeps its meaning
    assert "access denied while writing the reports" in explain("s3://b/out", plain, "writing the reports")


def test_remote_out_format_and_keys(tmp_path, s3, capsys):
    """The format claim is checked on a prefix as in a folder; no key outside --out is ever written."""
    from fcn_label.errors import InputError
    from fcn_label.predfolder.remote import RemoteOut

    src = pictures(tmp_path / "in", n=2, broken=False)
    s3.put("newer/.fcn-label/format.json", b'{"format": "fcn-label prediction folder", "version": 99}\n')
    for prefix, must in (("newer", "written by a newer fcn-label"), ("early", "written by an early fcn-label")):
        if prefix == "early":
            s3.put("early/.fcn-label/records/img00.json", b"{}")
        code, _, err = cli(capsys, "predict", src, "--out", s3.url(prefix), *FAST)
        assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            f"error: {s3.url(prefix)}: {must}"), err
    out = RemoteOut(s3.url("k"))
    for bad in ("../x.png", "a/../../x.png", "/x.png", "a//b.png", ""):
        with pytest.raises(InputError, match="outside --out"):
            out.put(bad, b"1")
    assert s3.objects("") == {"newer/.fcn-label/format.json": s3.objects("newer")[".fcn-label/format.json"],
                              "early/.fcn-label/records/img00.json": b"{}"}


def one_line_exit_2(capsys, *args, must: str) -> str:
    code, out, err = cli(capsys, "predict", *args, *FAST)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert must in lines[0], lines[0]
    return lines[0]


def test_store_errors_are_one_line_exit_2_before_any_work(tmp_path, s3, capsys, monkeypatch):
    src = pictures(tmp_path / "in", n=2, broken=False)
    line = one_line_exit_2(capsys, src, "--out", "s3://no-such-bkt/out", must="no such bucket 'no-such-bkt'")
    assert line.startswith("error: --out s3://no-such-bkt/out")
    one_line_exit_2(capsys, "s3://no-such-bkt/in", "--out", tmp_path / "o1", must="no such bucket 'no-such-bkt'")
    assert not (tmp_path / "o1").exists()

    # no credentials at all (no variables, no profile, no instance metadata)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    forget_clients()
    one_line_exit_2(capsys, src, "--out", s3.url("out"), must=f"{s3.url('out')}: no credentials for s3://")
    one_line_exit_2(capsys, s3.url("in"), "--out", tmp_path / "o2", must=f"{s3.url('in')}: no credentials")

    # the endpoint does not answer (one attempt, not the default retries)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    forget_clients()
    line = one_line_exit_2(capsys, src, "--out", s3.url("out"), must=f"{s3.url('out')}: the store does not answer")
    one_line_exit_2(capsys, s3.url("in"), "--out", tmp_path / "o3", must=f"{s3.url('in')}: the store does not answer")
    assert SECRET not in line


def test_denied_write_is_one_line_exit_2(tmp_path, s3, capsys, monkeypatch):
    """moto checking signatures and IAM policies: a user who may read but not write the bucket."""
    src = pictures(tmp_path / "in", n=2, broken=False)
    s3.upload(src, "in")
    read_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}]}
    with s3.enforce_auth(read_only) as (key, secret):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        forget_clients()
        line = one_line_exit_2(capsys, src, "--out", s3.url("out"), must=f"{s3.url('out')}: access denied while writing")
        assert secret not in line and key not in line
    nothing = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    with s3.enforce_auth(nothing) as (key, secret):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        forget_clients()
        one_line_exit_2(capsys, s3.url("in"), "--out", tmp_path / "o", must=f"input {s3.url('in')}: access denied")
        assert not (tmp_path / "o").exists()
    forget_clients()
    assert s3.objects("out") == {}



def test_reports_rescan_rule_the_last_upload_sees_every_shard(tmp_path, s3, monkeypatch):
    """The race the rule is for: shard 1 lists the segments and makes its reports, shard 0 then finishes
    completely (its reports list both shards), and only then does shard 1's upload land, over them, made
    without shard 0's records. Shard 1's listing after its upload sees shard 0's new segments, so it makes
    and uploads the reports again: the reports that stay list every image, as one run's do."""
    from fcn_label.checkpoint import load_checkpoint, resolve_weights
    from fcn_label.predfolder.remote import RemoteOut
    from fcn_label.predict import PredictJob, PredictOptions, Predictor, discover

    src = pictures(tmp_path / "in", n=6)
    s3.upload(src, "in")
    ck = load_checkpoint(resolve_weights(None))

    def job(url: str, shard: tuple[int, int]):
        items, problems = discover([s3.url("in")], url)
        opts = PredictOptions(out=url, workers=0, procs=1, encoders=0, shard=shard, batch_size=1)
        return PredictJob(Predictor(ck, device="cpu"), opts).run(items, problems)

    job(s3.url("once"), (0, 1))
    real_publish = RemoteOut.publish
    uploads = []

    def publish_after_the_other_shard(self, mirror, coco):
        if not uploads:  # shard 1's first reports are made: now shard 0 runs from start to end
            monkeypatch.setattr(RemoteOut, "publish", real_publish)
            job(s3.url("sharded"), (0, 2))
            monkeypatch.setattr(RemoteOut, "publish", publish_after_the_other_shard)
        uploads.append(1)
        real_publish(self, mirror, coco)

    monkeypatch.setattr(RemoteOut, "publish", publish_after_the_other_shard)
    job(s3.url("sharded"), (1, 2))
    assert len(uploads) == 2  # shard 1 uploaded twice: its first reports lacked shard 0's records
    assert comparable(s3.objects("sharded")) == comparable(s3.objects("once"))


def _local_walk_order(root: Path, skip: str | None = None) -> list[str]:
    """The reference: a plain top-down walk, a folder's files sorted, then its sub-folders sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and prefix + d != skip)
        out += [prefix + f for f in sorted(filenames)]
    return out


TREE = ["b.png", "a.png", "a b.png", "a/c.png", "a/a/z.png", ".h/x.png", "z/y/q.png", "out/o.png", "é.png", "B.png"]


@pytest.mark.parametrize("skip", [None, "out"])
def test_walk_files_gives_the_local_walk_order_on_s3_and_elsewhere(tmp_path, s3, skip, monkeypatch):
    """Streamed S3 listing (page by page, here handed over 3 entries at a time) and fsspec's walk (memory://)
    list what a local walk lists, in its order."""
    from fcn_label.storage import open_store
    from fcn_label.storage import store as store_module

    monkeypatch.setattr(store_module, "WALK_CHUNK", 3)
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1")
        s3.put(f"w/{name}", b"1")
    mem = open_store(f"memory://walk-{os.getpid()}-{skip}")
    for name in TREE:
        mem.write_bytes(name, b"1")
    want = _local_walk_order(tmp_path, skip)
    assert list(open_store(s3.url("w")).walk_files(skip=skip)) == want
    assert list(mem.walk_files(skip=skip)) == want
