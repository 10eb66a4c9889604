"""predict --engine ray on a real two-node Ray cluster (two `ray start` processes on 127.0.0.1), against the
local engine's files: the same masks, predictions.csv (less its timing column), predictions.json and
failures.csv; resume; and a worker node killed in the middle of a job.

The local references run with one process and one thread (--parallel procs=1, OMP_NUM_THREADS=1), as the
Ray engine's CPU actors do: a batch of one and a batch of several same-size images can differ in the last
float bits of the confidences, so both engines must form the same batches for the bytes to match (the Ray
driver plans them from the image headers as the local window forms them).
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_label.cli import run_cli
from support.s3 import credentials, s3, s3_server  # noqa: F401 (fixtures: s3 and s3_server)
from support.same_outputs import assert_same_outputs, files, without_seconds
from support.servers import stop_group, wait_until_up
from support.synth import make_arrays

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# the mixed-size set: every size but one shared by several images (so batches form), one size alone, a broken file
SIZES = [(32, 48)] * 6 + [(40, 56)] * 5 + [(24, 64)] * 4 + [(48, 40)]
KILL_N = 60  # images of the killed-node job, one per batch: many units of work, some in flight at the kill


# Ray's default ports for a node's other components: a head --port equal to one is refused ("Ray component
# dashboard_agent_http is trying to use a port number 52365 that is used by other components"), which a free
# port from the kernel once was
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365}


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


class Cluster:
    """A head node and worker nodes, each `ray start --block` in its own process group."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        # a token of this cluster's own (never ~/.ray), and node deaths noticed in seconds
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "OMP_NUM_THREADS": "1", "COLUMNS": "200",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.driver_env = {**self.env, "RAY_ADDRESS": self.address}

    def start_node(self, head: bool = False) -> subprocess.Popen:
        log = self.root / f"node{len(self.nodes)}.log"
        args = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root / 't'}"] \
            if head else [f"--address={self.address}"]
        proc = subprocess.Popen([_ray_bin(), "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 "--disable-usage-stats", "--block"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        self.nodes.append(proc)

        def started() -> None:
            if "Ray runtime started" not in log.read_text(errors="replace"):
                raise ConnectionError("not yet")

        wait_until_up(started, proc, log, "ray start", timeout=120)
        return proc


@pytest.fixture(scope="module")
def cluster(request):
    pytest.importorskip("ray", reason='the Ray engine needs Ray: pip install "fcn-label[scale-test]"')
    root = Path(tempfile.mkdtemp(prefix="fcnray", dir="/tmp"))  # short: Ray's socket paths live under it
    c = Cluster(root)
    try:  # every node gets the S3 server's variables, as real nodes get their store's credentials from their own chain
        c.env.update(credentials(request.getfixturevalue("s3_server")))
        c.driver_env.update(c.env)
    except pytest.skip.Exception:
        pass  # no moto: the object-store test skips, saying why
    try:
        c.start_node(head=True)
        c.start_node()
        yield c
    finally:
        stop_all(c.nodes)
        shutil.rmtree(root, ignore_errors=True)


def stop_all(nodes: list[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM to every node's group at once (each takes seconds to shut down), SIGKILL to any left after ``grace``."""
    live = [p for p in nodes if p.poll() is None]
    for p in live:
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_group(p, grace=0)


def _write_images(folder: Path, sizes, seed: int, broken: bool) -> None:
    folder.mkdir(parents=True)
    base = make_arrays(len(sizes), classes=3, seed=seed)
    for i, ((stem, img, _), (h, w)) in enumerate(zip(base, sizes)):
        path = folder / ("sub" if i % 5 == 0 else "") / f"{stem}.png"  # a subfolder too: its outputs mirror it
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).resize((w, h)).save(path)
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _local(src: Path, out: Path, *extra: str) -> None:
    """The reference: the local engine in one process, one thread."""
    proc = subprocess.run([sys.executable, "-m", "fcn_label", "predict", str(src), "--out", str(out), "-q",
                           "--parallel", "procs=1", *extra],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True)
    assert proc.returncode in (0, 1), proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayjob")
    _write_images(root / "in", SIZES, seed=0, broken=True)
    _local(root / "in", root / "ref")
    rows = list(csv.DictReader((root / "ref" / "failures.csv").open()))
    assert [(Path(r["path"]).name, r["stage"]) for r in rows] == [("broken.png", "decode")]
    return root


def record_lines(out: Path) -> list[str]:
    """The file_name of every image record line: one per image means no image was counted twice."""
    return [json.loads(line)["file_name"] for seg in sorted((out / ".fcn-label" / "records").glob("*.jsonl"))
            for line in seg.read_text().splitlines() if line.strip()]


def ray_predict(cluster: Cluster, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    """The CLI as a driver of the cluster (RAY_ADDRESS): its exit status and what it printed."""
    proc = subprocess.run([sys.executable, "-m", "fcn_label", "predict", str(src), "--out", str(out), "-q",
                           "--engine", "ray", *extra], env=cluster.driver_env, capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stderr


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as without the package
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as e:
        run_cli(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert 'pip install "fcn-label[ray]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_address_nothing_answers_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray", reason='the Ray engine needs Ray: pip install "fcn-label[ray]"')
    import ray

    if ray.is_initialized():
        pytest.skip("this process is already connected to a cluster")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    port = _free_port()
    with pytest.raises(SystemExit) as e:
        run_cli(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--engine", "ray",
                 "--ray-address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in err and "Traceback" not in err


def test_a_wrong_auth_token_is_one_line_exit_2(cluster, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    # Ray retries the refused connection 20 times, a second apart; 3 here (each retry prints a line of Ray's)
    env = {**cluster.driver_env, "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_NUM_REDIS_GET_RETRIES": "3"}
    proc = subprocess.run([sys.executable, "-m", "fcn_label", "predict", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "-q", "--engine", "ray"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: RAY_ADDRESS {cluster.address}: cannot connect") and "RAY_AUTH_TOKEN" in last, last
    assert "Traceback" not in proc.stderr and env["RAY_AUTH_TOKEN"] not in proc.stderr


def test_ray_engine_writes_the_local_engines_files(cluster, data):
    out = data / "ray"
    code, err = ray_predict(cluster, data / "in", out)
    assert code == 1, err  # the broken image
    assert "done 16, skipped 0 (already done), failed 1" in err
    assert f"on Ray at {cluster.address} (RAY_ADDRESS)" in err
    # only fcn-label's lines: none of Ray's log lines (they name their source, e.g. core_worker.cc:2465; Ray
    # printed one per actor when actors it could restart were built from an object in the object store)
    assert not [ln for ln in err.splitlines() if re.search(r"\b\w+\.(cc|h|py):\d+", ln)], err
    assert_same_outputs(out, data / "ref")
    assert sorted(record_lines(out)) == sorted(r["mask"] for r in csv.DictReader((data / "ref" / "predictions.csv").open()))


# The CLI as a driver whose plan is a GPU cluster's but for the device: the Ray Data pipeline, on CPU actors.
PIPELINE_ON_CPUS = """
import sys
from fcn_label.cli import main
from fcn_label.predict.ray_engine import Plan

Plan.for_cluster = classmethod(lambda cls, resources, settings: cls(
    gpu=False, actors=int(resources["CPU"]), tasks=int(resources["CPU"]), pipeline=True))
sys.argv[0] = "fcn-label"
main()
"""


def test_the_ray_data_pipeline_writes_the_local_engines_files(cluster, data):
    """The pipeline a GPU cluster gets (Ray Data: decode tasks, network actors, write tasks), here with CPU
    actors on this CPU-only cluster: everything a GPU run does but CUDA itself."""
    out = data / "ray-pipeline"
    proc = subprocess.run([sys.executable, "-c", PIPELINE_ON_CPUS, "predict", str(data / "in"), "--out", str(out),
                           "-q", "--engine", "ray"], env=cluster.driver_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken image
    assert "done 16, skipped 0 (already done), failed 1" in proc.stderr
    assert_same_outputs(out, data / "ref")
    assert sorted(record_lines(out)) == sorted(record_lines(data / "ref"))
    # Ray's own lines: only its notice per Ray Data actor about restarts (ray-project/ray#53727, #57733), which
    # Ray Data's actors get whatever their arguments (docs/scale-out.md says so)
    ray_lines = [ln for ln in proc.stderr.splitlines() if re.search(r"\b\w+\.(cc|h|py):\d+", ln)]
    assert all("has constructor arguments in the object store" in ln for ln in ray_lines), proc.stderr


def test_a_second_run_skips_everything_and_a_partial_folder_completes(cluster, data):
    out = data / "ray"
    if not out.is_dir():
        pytest.skip("needs the first test's folder")
    code, err = ray_predict(cluster, data / "in", out)
    assert code == 1  # the broken image is still listed
    assert "done 0, skipped 16 (already done), failed 1" in err
    assert_same_outputs(out, data / "ref")

    # a folder the local engine half finished: keep the first 7 records (their masks) and nothing else
    part = data / "partial"
    shutil.copytree(data / "ref", part)
    (seg,) = (part / ".fcn-label" / "records").glob("*.jsonl")
    lines = seg.read_text().splitlines(keepends=True)
    seg.write_text("".join(lines[:7]))
    kept = {json.loads(line)["file_name"] for line in lines[:7]}
    for p in part.rglob("*.png"):
        if ".fcn-label" not in p.parts and p.relative_to(part).as_posix() not in kept:
            p.unlink()
    for report in ("predictions.csv", "predictions.json", "failures.csv"):
        (part / report).unlink()
    shutil.rmtree(part / ".fcn-label" / "failures", ignore_errors=True)
    code, err = ray_predict(cluster, data / "in", part)
    assert code == 1
    assert "done 9, skipped 7 (already done), failed 1" in err
    assert_same_outputs(part, data / "ref")
    assert len(record_lines(part)) == 16


def test_a_worker_node_killed_mid_job(cluster, tmp_path):
    """A third node joins, takes a share of the work, and is killed (its whole process group) mid-job: the run
    finishes, or stops saying to re-run and the re-run finishes; either way the files are the local engine's
    (the broken image listed once), and every image has exactly one record."""
    src = tmp_path / "in"
    _write_images(src, [(64, 96)] * KILL_N, seed=1, broken=True)
    ref = tmp_path / "ref"
    _local(src, ref, "--batch-size", "1")
    node = cluster.start_node()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fcn_label", "predict", str(src), "--out", str(out), "-q", "--engine", "ray",
           "--batch-size", "1"]
    job = subprocess.Popen(cmd, env=cluster.driver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        records = out / ".fcn-label" / "records"
        deadline = time.monotonic() + 240
        while job.poll() is None and time.monotonic() < deadline:
            n = sum(seg.read_bytes().count(b"\n") for seg in records.glob("*.jsonl")) if records.is_dir() else 0
            if n >= 1:  # the first records are in: every actor, the new node's too, holds batches
                break
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before the kill; give it more work: " + job.stderr.read()
        stop_group(node, grace=0)  # SIGTERM then, at once, SIGKILL: the node and its workers are gone
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            stop_group(job)
    print(f"first run: exit {job.returncode}\n{err}")  # pytest -rP: which way this run went
    assert job.returncode == 1, err  # the broken image, at least
    done = [int(err.split("done ")[1].split(",")[0])]
    if "stopped early" in err:  # Ray gave up: the run says so, keeps what is done, and a re-run finishes
        assert "re-run the same command" in err, err
        again = subprocess.run(cmd, env=cluster.driver_env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 1 and "stopped early" not in again.stderr, again.stderr
        assert f"skipped {done[0]} (already done), failed 1" in again.stderr
        done.append(int(again.stderr.split("done ")[1].split(",")[0]))
    else:
        assert "failed 1 " in err
    assert sum(done) == KILL_N
    assert_same_outputs(out, ref)  # failures.csv among them: one row
    assert sorted(record_lines(out)) == sorted(p.relative_to(src).as_posix() for p in src.rglob("im*.png"))


def test_ray_engine_reads_and_writes_an_object_store(cluster, data, s3):
    """s3://.../in to s3://.../out through the cluster: the objects are the local run's files (the input paths
    in the reports name the URLs), with one record per image."""
    src = s3.upload_to(data / "in", "in")
    proc = subprocess.run([sys.executable, "-m", "fcn_label", "predict", src, "--out", s3.url("out"), "-q",
                           "--engine", "ray"], env=cluster.driver_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken image
    assert "done 16, skipped 0 (already done), failed 1" in proc.stderr
    objects = s3.objects("out")
    got = {k: v.replace(src.encode(), str(data / "in").encode()) for k, v in objects.items()
           if not k.startswith(".fcn-label/")}
    want = files(data / "ref")
    assert sorted(got) == sorted(want)
    assert without_seconds(got.pop("predictions.csv")) == without_seconds(want.pop("predictions.csv"))
    assert got == want
    lines = [json.loads(line)["file_name"] for k, v in objects.items() if k.startswith(".fcn-label/records/")
             for line in v.decode().splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) == 16
