"""evaluate, review, select, export and finetune with URL arguments, against a real S3 server (moto).

Each verb's result from the store is compared with the same verb on the local copy of the same files
(the reference), and store problems are one line naming the URL, exit 2."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from support.export_folder import run_cli
from support.review_folder import run_predict
from support.s3 import SECRET, free_port, s3, s3_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A real predict folder (tiny model) over photos in sub-folders, with ground truth: root/photos,
    root/gt, root/pred; one extra ground-truth mask is unreadable (a failures.csv row)."""
    root = tmp_path_factory.mktemp("remote")
    run_predict(root, probs=True, gt=True, n=6)
    (root / "gt" / "a" / "zz.png").write_bytes(b"not a png")
    (root / "gt" / "classes.txt").write_text("".join(f"class{i}\n" for i in range(5)))
    return root


def _stage(s3, root: Path, *names: str) -> dict[str, str]:
    return {n: s3.upload_to(root / n, n) for n in names}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("downloaded ")]  # progress notes
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and SECRET not in r.stderr
    assert "fcn-label-stage" not in r.stderr  # names the URL, not the temporary copy
    for n in needles:
        assert n in lines[0], (n, lines[0])


# -- evaluate ---------------------------------------------------------------------------------------
def test_evaluate_from_s3_to_s3_writes_the_local_runs_report(s3, predicted, tmp_path):
    urls = _stage(s3, predicted, "gt", "pred")
    local = tmp_path / "local"
    ref = run_cli("evaluate", "--gt", str(predicted / "gt"), "--pred", str(predicted / "pred"), "--out", str(local),
                  "-q")
    r = run_cli("evaluate", "--gt", urls["gt"], "--pred", urls["pred"], "--out", s3.url("report"), "-q")
    assert ref.returncode == r.returncode == 1, (ref.stderr, r.stderr)  # the unreadable mask: exit 1, as locally
    assert r.stdout == ref.stdout  # the same figures in the terminal report
    got = s3.download("report", tmp_path / "got")
    want = _files(local)
    assert sorted(_files(got)) == sorted(want) and "failures.csv" in want
    for name, data in want.items():  # the CSVs name each file by its URL, not the temporary copy
        assert _files(got)[name] == data.replace(str(predicted).encode(), f"s3://{s3.bucket}".encode()), name
    assert f"s3://{s3.bucket}/gt/a/zz.png".encode() in _files(got)["failures.csv"]
    assert f"report in {s3.url('report')}" in r.stderr and "fcn-label-stage" not in r.stderr + r.stdout
    import tempfile

    assert not list(Path(tempfile.gettempdir()).glob(f"fcn-label-stage-*-{os.getpid()}-*"))  # removed at the end


def test_evaluate_list_file_url_brings_the_files_it_names(s3, predicted, tmp_path):
    """A list file of 'image mask' lines on the store: the masks it names come with it."""
    pred = predicted / "pred"
    photos = {p.relative_to(predicted / "photos").with_suffix("").as_posix(): p.relative_to(predicted).as_posix()
              for p in (predicted / "photos").rglob("*.*")}
    lines = [f"{photos[p.relative_to(pred).with_suffix('').as_posix()]} gt/{p.relative_to(pred).as_posix()}"
             for p in sorted(pred.glob("[ab]/*.png"))]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    s3.upload_to(predicted / "gt", "gt")
    s3.upload_to(predicted / "photos", "photos")
    url = s3.upload_to(tmp_path / "val.txt", "val.txt")
    shutil.copytree(predicted / "gt", tmp_path / "gt")
    shutil.copytree(predicted / "photos", tmp_path / "photos")
    ref = run_cli("evaluate", "--gt", str(tmp_path / "val.txt"), "--pred", str(pred), "--format", "json", "-q")
    r = run_cli("evaluate", "--gt", url, "--pred", str(pred), "--format", "json", "-q")
    assert ref.returncode == r.returncode == 0, r.stderr
    a, b = json.loads(ref.stdout), json.loads(r.stdout)
    assert a["summary"]["images_evaluated"] == len(lines) and a["summary"]["pixels_evaluated"] > 0
    assert a == b


# -- review, select, export -------------------------------------------------------------------------
def test_review_from_s3_writes_the_local_runs_page(s3, predicted, tmp_path):
    urls = _stage(s3, predicted, "gt", "pred")
    ref = run_cli("review", str(predicted / "pred"), "--gt", str(predicted / "gt"), "--out", str(tmp_path / "local"),
                  "-q")
    r = run_cli("review", urls["pred"], "--gt", urls["gt"], "--out", s3.url("review"), "-q")
    assert ref.returncode == r.returncode, (ref.stderr, r.stderr)
    got, want = _files(s3.download("review", tmp_path / "got")), _files(tmp_path / "local")
    assert sorted(got) == sorted(want) and "index.html" in want
    for name, data in want.items():  # the page names the folders by their URLs; photos as predict recorded them
        for folder in ("pred", "gt"):
            data = data.replace(f"{predicted}/{folder}".encode(), s3.url(folder).encode())
        assert got[name] == data, name


def test_review_rerun_reuses_the_thumbnails_already_on_the_store(s3, predicted, tmp_path):
    urls = _stage(s3, predicted, "pred")
    first = run_cli("review", urls["pred"], "--out", s3.url("review"), "-q")
    again = run_cli("review", urls["pred"], "--out", s3.url("review"), "-q")
    assert first.returncode == again.returncode == 0, again.stderr
    assert " 0 reused" in first.stderr and "0 thumbnails written" in again.stderr, again.stderr


def test_select_from_s3_writes_the_local_runs_list(s3, predicted, tmp_path):
    urls = _stage(s3, predicted, "pred", "gt")
    for strategy in ("uncertainty", "diverse"):
        ref = run_cli("select", str(predicted / "pred"), "--k", "3", "--strategy", strategy,
                      "--masks", str(predicted / "gt"), "--out", str(tmp_path / f"{strategy}.txt"))
        r = run_cli("select", urls["pred"], "--k", "3", "--strategy", strategy, "--masks", urls["gt"],
                    "--out", s3.url(f"lists/{strategy}.txt"))
        assert ref.returncode == r.returncode == 0, r.stderr
        want = (tmp_path / f"{strategy}.txt").read_text().replace(f"{predicted}/gt", s3.url("gt"))
        assert s3.fs().cat_file(f"{s3.bucket}/lists/{strategy}.txt").decode() == want
        assert f"s3://{s3.bucket}/gt/" in want  # the --masks column names the store, not the temporary copy
    assert s3.keys("lists") == ["diverse.txt", "uncertainty.txt"]  # the write probe left nothing behind


@pytest.mark.parametrize("fmt", ["cvat", "labelme", "labelstudio"])
def test_export_from_s3_writes_the_local_runs_files(s3, predicted, tmp_path, fmt):
    """Photos and output on one bucket, laid out as locally: the relative paths labelme writes agree."""
    urls = _stage(s3, predicted, "pred", "photos")
    (tmp_path / "next.txt").write_text("a/im01\nb/im02\n")
    only = s3.upload_to(tmp_path / "next.txt", "next.txt")
    local = predicted / f"export-{fmt}"
    ref = run_cli("export", str(predicted / "pred"), "--format", fmt, "--images", str(predicted / "photos"),
                  "--only", str(tmp_path / "next.txt"), "--out", str(local))
    r = run_cli("export", urls["pred"], "--format", fmt, "--images", urls["photos"], "--only", only,
                "--out", s3.url(f"export-{fmt}"))
    assert ref.returncode == r.returncode == 0, (ref.stderr, r.stderr)
    got, want = _files(s3.download(f"export-{fmt}", tmp_path / "got")), _files(local)
    shutil.rmtree(local)
    assert sorted(got) == sorted(want) and len(want) >= 2
    def as_urls(b: bytes) -> bytes:  # the local run's folders, named as the store's
        for folder in ("pred", "photos"):
            b = b.replace(f"{predicted}/{folder}".encode(), s3.url(folder).encode())
        return b

    def members(b: bytes) -> dict[str, bytes]:  # a zip's members (the archive carries the files' times)
        with zipfile.ZipFile(io.BytesIO(b)) as z:
            return {n: z.read(n) for n in z.namelist()}

    for name, data in want.items():
        if name.endswith(".zip"):
            assert members(got[name]) == {n: as_urls(b) for n, b in members(data).items()}, name
        else:
            assert got[name] == as_urls(data), name
    again = run_cli("export", urls["pred"], "--format", fmt, "--images", urls["photos"], "--only", only,
                    "--out", s3.url(f"export-{fmt}"))
    assert again.returncode == 0 and "0 written, 2 already done" in again.stderr, again.stderr


# -- finetune ---------------------------------------------------------------------------------------
TINY = ["--set", "width=0.0625", "--set", "fc_channels=16", "--set", "crop=32x48", "--set", "scale=0.75,1.5",
        "--set", "threads=1"]
FCN_LABEL = Path(sys.executable).parent / "fcn-label"


def _log(path: Path) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def test_finetune_from_s3_to_s3_matches_a_local_run_and_resumes_from_the_store(s3, tmp_path):
    from support.synth import write_list_dataset

    data = write_list_dataset(tmp_path / "d", n=4)
    val = write_list_dataset(tmp_path / "d", n=2, seed=1, name="val")
    s3.upload_to(tmp_path / "d", "d")
    args = ["--num-classes", "3", "-b", "2", *TINY]
    for epochs, more in (("1", []), ("2", ["--resume"])):  # the reference: the same two commands, locally
        assert run_cli("finetune", str(data), "--val", str(val), "-o", str(tmp_path / "local"), "--epochs", epochs,
                       *more, *args).returncode == 0
    r = run_cli("finetune", s3.url("d/train.txt"), "--val", s3.url("d/val.txt"), "-o", s3.url("run"),
                "--epochs", "1", *args)
    assert r.returncode == 0, r.stderr
    assert {"best.pt", "last.pt", "log.csv", "log.json", "config.json"} <= set(s3.keys("run"))
    assert f"model {s3.url('run')}/best.pt" in r.stderr and "fcn-label-stage" not in r.stderr
    config = json.loads(s3.fs().cat_file(f"{s3.bucket}/run/config.json"))
    assert (config["data"], config["val"], config["out"]) == (s3.url("d/train.txt"), s3.url("d/val.txt"), s3.url("run"))
    # the same command again refuses to reuse the run; --resume continues it from the store
    again = run_cli("finetune", s3.url("d/train.txt"), "--val", s3.url("d/val.txt"), "-o", s3.url("run"),
                    "--epochs", "2", *args)
    _one_line_error(again, f"{s3.url('run')}/last.pt: a run already exists there")
    r = run_cli("finetune", s3.url("d/train.txt"), "--val", s3.url("d/val.txt"), "-o", s3.url("run"),
                "--epochs", "2", "--resume", *args)
    assert r.returncode == 0, r.stderr
    got = s3.download("run", tmp_path / "got")
    assert _log(got / "log.csv") == _log(tmp_path / "local" / "log.csv")  # figures as in the local run
    from fcn_label.checkpoint import load_checkpoint

    ck = load_checkpoint(got / "last.pt")
    assert ck.metadata["dataset"] == s3.url("d/train.txt") and ck.train_state["epoch"] == 2
    # the config.json on the store repeats the run: its data and val URLs are staged like the arguments
    r = run_cli("finetune", "--config", s3.url("run/config.json"), "-o", s3.url("run2"), "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert _log(s3.download("run2/log.csv", tmp_path / "log2.csv")) == _log(tmp_path / "local" / "log.csv")[:1]


def test_finetune_killed_mid_run_resumes_from_what_was_uploaded(s3, tmp_path):
    """kill -9 while training to s3://: last.pt went up after every save, so --resume continues from
    there and reaches the state of a run that was never interrupted."""
    import torch

    from fcn_label.checkpoint import WeightsError, load_checkpoint
    from support.synth import write_list_dataset

    data = write_list_dataset(tmp_path / "d", n=4)
    data_url = s3.upload_to(data.parent, "d") + "/train.txt"
    args = ["-b", "1", "--epochs", "30", "--num-classes", "3", "--set", "checkpoint_every_steps=1", *TINY]
    proc = subprocess.Popen([str(FCN_LABEL), "finetune", data_url, *args, "-o", s3.url("run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    probe = tmp_path / "probe.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                s3.download("run/last.pt", probe)
                if load_checkpoint(probe).train_state["step"] >= 3:
                    break
            except (FileNotFoundError, WeightsError):
                pass
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    survived = load_checkpoint(s3.download("run/last.pt", probe)).train_state  # a whole object, never half
    assert 3 <= survived["step"] < 30 * 4
    stop = survived["step"] + 5
    assert run_cli("finetune", data_url, *args, "-o", s3.url("run"), "--resume",
                   "--set", f"max_steps={stop}").returncode == 0
    assert run_cli("finetune", str(data), *args, "-o", str(tmp_path / "straight"),
                   "--set", f"max_steps={stop}").returncode == 0
    a = load_checkpoint(s3.download("run/last.pt", probe)).train_state
    b = load_checkpoint(tmp_path / "straight" / "last.pt").train_state
    assert a["step"] == b["step"] == stop
    for k in b["model"]:
        assert torch.allclose(a["model"][k].double(), b["model"][k].double(), atol=1e-6, rtol=0), k


def test_finetune_init_from_a_url(s3, tmp_path):
    from fcn_label.checkpoint import load_checkpoint
    from support.synth import write_list_dataset

    data = write_list_dataset(tmp_path / "d", n=2)
    init = s3.upload_to(Path(__file__).resolve().parents[1] / "pretrained" / "fcn8s-compact-camvid.pt", "m/init.pt")
    r = run_cli("finetune", str(data), "--init", init, "--num-classes", "3", "--epochs", "1", "-b", "2",
                "-o", str(tmp_path / "run"), "--set", "crop=32x48", "--set", "threads=1")
    assert r.returncode == 0, r.stderr
    assert f"init: {init}" in r.stderr  # named by its URL
    assert load_checkpoint(tmp_path / "run" / "last.pt").config.width == \
        load_checkpoint(Path(__file__).resolve().parents[1] / "pretrained" / "fcn8s-compact-camvid.pt").config.width


# -- store problems ---------------------------------------------------------------------------------
def test_store_problems_are_one_line_naming_the_url(s3, predicted, tmp_path, monkeypatch):
    pred, gt = str(predicted / "pred"), str(predicted / "gt")
    missing = "s3://no-such-bucket-fcn/gt"
    _one_line_error(run_cli("evaluate", "--gt", missing, "--pred", pred), missing, "no such bucket")
    _one_line_error(run_cli("review", s3.url("nothing/here"), "--out", str(tmp_path / "r")),
                    s3.url("nothing/here"), "not found")
    _one_line_error(run_cli("export", pred, "--format", "cvat", "--out", "s3://no-such-bucket-fcn/x"),
                    "--out s3://no-such-bucket-fcn/x", "no such bucket")
    _one_line_error(run_cli("select", pred, "--k", "2", "--out", "https://example.com/next.txt"),
                    "https://example.com/next.txt", "read-only")
    _one_line_error(run_cli("finetune", s3.url("no/data.txt"), "-o", str(tmp_path / "run")),
                    s3.url("no/data.txt"), "not found")
    assert not (tmp_path / "r").exists() and not (tmp_path / "run").exists()

    from s3fs import S3FileSystem

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    S3FileSystem.clear_instance_cache()
    _one_line_error(run_cli("evaluate", "--gt", gt, "--pred", s3.url("pred")), s3.url("pred"), "does not answer")

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(k, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    S3FileSystem.clear_instance_cache()
    _one_line_error(run_cli("review", pred, "--out", s3.url("review")), s3.url("review"), "no credentials")


def test_local_paths_make_no_temporary_folder(predicted, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    r = run_cli("select", str(predicted / "pred"), "--k", "2", "--out", str(tmp_path / "next.txt"))
    assert r.returncode == 0 and list((tmp_path / "tmp").iterdir()) == []


def test_predict_weights_from_a_url(s3, predicted, tmp_path):
    """--weights s3://...: the model is fetched for the run (and removed at exit); masks equal a local run's."""
    shipped = Path(__file__).resolve().parents[1] / "pretrained" / "fcn8s-compact-camvid.pt"
    url = s3.upload_to(shipped, "models/compact.pt")
    photos = predicted / "photos" / "a"
    ref = run_cli("predict", str(photos), "-w", str(shipped), "--out", str(tmp_path / "local"), "-q")
    r = run_cli("predict", str(photos), "-w", url, "--out", str(tmp_path / "remote"), "-q")
    assert ref.returncode == r.returncode == 0, r.stderr
    masks = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").glob("*.png"))
    assert masks and all((tmp_path / "local" / m).read_bytes() == (tmp_path / "remote" / m).read_bytes()
                         for m in masks)
    _one_line_error(run_cli("predict", str(photos), "-w", s3.url("models/none.pt"), "--out", str(tmp_path / "x")),
                    s3.url("models/none.pt"), "not found")
    gt = str(predicted / "gt")
    ref = run_cli("evaluate", "--gt", gt, "--images", str(predicted / "photos"), "-w", str(shipped),
                  "--format", "json", "-q")
    r = run_cli("evaluate", "--gt", gt, "--images", str(predicted / "photos"), "-w", url, "--format",
                "json", "-q")
    assert ref.returncode == r.returncode and ref.stdout == r.stdout, (ref.stderr, r.stderr)
    assert json.loads(r.stdout)["summary"]["images_evaluated"] == 6


def test_predict_gt_and_classes_from_urls(s3, predicted, tmp_path):
    """predict --gt s3://... --classes s3://...: predictions.csv (IoU columns, class names) equals a local run's."""
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(11)))  # the shipped model's 11 classes, renamed
    urls = _stage(s3, predicted, "gt")
    names_url = s3.upload_to(names, "names.txt")
    photos = str(predicted / "photos")
    ref = run_cli("predict", photos, "--gt", str(predicted / "gt"), "--classes", str(names), "--out",
                  str(tmp_path / "local"), "-q", "--parallel", "procs=1")
    r = run_cli("predict", photos, "--gt", urls["gt"], "--classes", names_url, "--out", str(tmp_path / "remote"),
                "-q", "--parallel", "procs=1")
    assert ref.returncode == r.returncode, (ref.stderr, r.stderr)
    assert "c1" in (tmp_path / "local" / "predictions.csv").read_text()

    def rows(folder: Path) -> list[dict]:
        out = list(csv.DictReader((folder / "predictions.csv").open()))
        for row in out:
            row.pop("seconds")
        return out

    got, want = rows(tmp_path / "remote"), rows(tmp_path / "local")
    assert any(v not in ("", None) for row in want for k, v in row.items() if "iou" in k.lower())
    assert got == want
    _one_line_error(run_cli("predict", photos, "--gt", s3.url("no/gt"), "--out", str(tmp_path / "x")),
                    s3.url("no/gt"), "not found")


@pytest.fixture
def web(predicted, tmp_path):
    """A read-only web server (Python's http.server) serving the predicted folder's parent tree."""
    from support.servers import stop_group, wait_until_up
    import urllib.request

    port = free_port()
    log = tmp_path / "http.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)], cwd=predicted,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: urllib.request.urlopen(url + "/", timeout=2), proc, log, "http.server", 30, poll=0.1)
        yield url
    finally:
        stop_group(proc, grace=5)


def test_http_inputs_are_read_and_http_outputs_refused(web, predicted, tmp_path):
    pytest.importorskip("aiohttp", reason='aiohttp not installed (pip install "fcn-label[http]")')
    ref = run_cli("evaluate", "--gt", str(predicted / "gt"), "--pred", str(predicted / "pred"), "--format", "json",
                  "-q")
    r = run_cli("evaluate", "--gt", f"{web}/gt/", "--pred", f"{web}/pred/", "--format", "json", "-q")
    assert ref.returncode == r.returncode == 1, r.stderr
    a, b = json.loads(ref.stdout), json.loads(r.stdout)
    assert b == json.loads(json.dumps(a).replace(str(predicted), web))  # failures name the http:// URLs
    _one_line_error(run_cli("review", f"{web}/pred/", "--out", f"{web}/review"), f"{web}/review", "read-only")


# -- the staging itself -----------------------------------------------------------------------------
def test_sync_uploads_only_new_or_changed_whole_files_and_deletes_nothing(s3, tmp_path):
    from fcn_label.staging import Staging

    s3.upload_to(_write(tmp_path / "old", {"keep.txt": "there before", "a.bin": "1"}), "out")
    with Staging() as st:
        out = st.output(s3.url("out"), "--out")
        assert (out / "keep.txt").read_text() == "there before"  # what was there is downloaded first
        assert st.sync() == 0
        (out / "a.bin").write_text("22")
        (out / "new").mkdir()
        (out / "new" / "b.csv").write_text(f"{out}/new/b.csv\n")
        (out / ".b.csv.host~123.tmp").write_text("half")  # an unfinished atomic write: never uploaded
        assert st.sync() == 2 and st.sync() == 0
        (out / "keep.txt").unlink()
    assert s3.keys("out") == ["a.bin", "keep.txt", "new/b.csv"]
    assert s3.fs().cat_file(f"{s3.bucket}/out/new/b.csv") == f"{s3.url('out')}/new/b.csv\n".encode()
    assert s3.fs().cat_file(f"{s3.bucket}/out/a.bin") == b"22" and not st.root.exists()


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    import socket

    from fcn_label.staging import TEMP_PREFIX, remove_stale_folders

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f"{TEMP_PREFIX}{host}-{dead.pid}-abc", f"{TEMP_PREFIX}{host}-{os.getpid()}-def",
             f"{TEMP_PREFIX}otherhost-{dead.pid}-ghi", "unrelated"]
    for n in names:
        (tmp_path / n).mkdir()
    assert remove_stale_folders(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
