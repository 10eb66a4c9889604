"""predict --engine ray against the local engine on the same frames, and one Ray node against two.

    python benchmarks/ray_engine.py [--n 200] [--device cpu|cuda] [--runs local,ray1,ray2] [--batch-size B]
                                    [--json FILE]

The frames: the first ``--n`` of CamVid's val.txt then train.txt (../shared/data/camvid, or
FCN_LABEL_SHARED), as a list file; without CamVid, synthetic 360x480 PNGs (said in the table). Each run is
the real CLI in a subprocess on a fresh --out, with the shipped compact model:

* local: ``predict`` with the local engine (its defaults for this machine);
* ray1: ``--engine ray`` on a one-node Ray cluster this script starts on 127.0.0.1 (all cores, the GPU),
  started as docs/scale-out.md advises: workers started with the node, torch and fcn-label's worker
  module imported in them (``RAY_enable_worker_prestart=1``,
  ``RAY_preload_python_modules=...``), so that an actor's start is not a torch import;
* ray1-plain: the same with a plain ``ray start`` (each actor's worker imports torch when the job starts);
* ray2: two nodes on this machine, each with half the cores (the GPU on the head node), started as ray1:
  what a second machine costs in coordination, without a second machine's cores;

Each cluster is left SETTLE_S seconds after it starts (a cluster is up before jobs come) before the run.
* with ``--device cuda``, also the network alone: the forward pass on pre-decoded, pre-normalised
  batches of the same frames, the ceiling of an end-to-end rate.

The table gives the job's own rate (what predict prints: from opening --out to the reports, so with Ray
it includes connecting and the actors' start) and the wall clock of the whole command (Python and torch
imports too), and checks that every run wrote the same masks. Figures depend on the machine and on what
else runs there: the table says which machine and when.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"


def frames(root: Path, n: int) -> tuple[Path, str]:
    """A list file of ``n`` frames, and where they came from."""
    paths: list[str] = []
    for name in ("val.txt", "train.txt"):
        if (CAMVID / name).is_file():
            for line in (CAMVID / name).read_text().splitlines():
                if line.strip():
                    paths.append(str(CAMVID / line.split()[0]))
    source = f"CamVid val+train ({CAMVID})"
    if len(paths) < n:
        from PIL import Image

        rng = np.random.default_rng(0)
        (root / "synthetic").mkdir()
        paths = []
        for i in range(n):
            p = root / "synthetic" / f"f{i:04d}.png"
            Image.fromarray(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)).save(p)
            paths.append(str(p))
        source = "synthetic 360x480 PNGs (CamVid not found)"
    lst = root / "frames.txt"
    lst.write_text("\n".join(paths[:n]) + "\n")
    return lst, source


# What docs/scale-out.md advises for the nodes of a cluster that runs predict: Ray system settings,
# read from RAY_<name> variables by `ray start`.
PRELOAD_ENV = {"RAY_enable_worker_prestart": "1",
               "RAY_preload_python_modules": "torch,fcn_label.predict.ray_stages"}
SETTLE_S = 10


class Cluster:
    """Ray nodes on 127.0.0.1, each `ray start --block` in its own process group, with a token of its own."""

    def __init__(self, root: Path, preload: bool):
        self.port = 52365
        while self.port in (6379, 8265, 10001, 52365):  # Ray's default ports for a node's other components
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self.root, self.address, self.nodes = root, f"127.0.0.1:{self.port}", []
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.node_env = {**self.env, **(PRELOAD_ENV if preload else {})}

    def start(self, cpus: int, gpus: int) -> None:
        head = not self.nodes
        log = self.root / f"node{len(self.nodes)}.log"
        args = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root / 't'}"] \
            if head else [f"--address={self.address}"]
        proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", *args, "--node-ip-address=127.0.0.1",
                                 f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--disable-usage-stats", "--block"],
                                stdout=log.open("wb"), stderr=subprocess.STDOUT, env=self.node_env,
                                start_new_session=True)
        self.nodes.append(proc)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start failed: {log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        for p in self.nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.nodes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def predict(lst: Path, out: Path, extra: list[str], env: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fcn_label", "predict", str(lst), "--out", str(out), "-q", *extra],
                          env={**env, "COLUMNS": "300"}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    m = re.search(r"done (\d+), skipped \d+ \(already done\), failed (\d+) in ([\d.]+)s \(([\d.]+) img/s\)", proc.stderr)
    if proc.returncode not in (0, 1) or not m:
        raise SystemExit(f"predict {' '.join(extra)} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return {"done": int(m.group(1)), "failed": int(m.group(2)), "job_s": float(m.group(3)),
            "job_img_s": float(m.group(4)), "wall_s": wall, "wall_img_s": int(m.group(1)) / wall}


def masks_digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*.png")):
        if ".fcn-label" not in p.parts:
            h.update(str(p.relative_to(out)).encode() + p.read_bytes())
    return h.hexdigest()[:12]


def network_alone(lst: Path, device: str, batch_size: int | None, rounds: int = 3) -> float:
    """Images/s of the forward pass alone on the frames, pre-decoded and pre-normalised, batched by size."""
    import torch

    from fcn_label.checkpoint import SHIPPED, load_checkpoint
    from fcn_label.images import read_image
    from fcn_label.predict import Predictor

    p = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device=device)
    by_shape: dict = {}
    for path in lst.read_text().split():
        a = read_image(path)
        by_shape.setdefault(a.shape, []).append(a)
    batches = []
    for shape, arrs in by_shape.items():
        n = p.batch_limit(shape, batch_size)
        batches += [p.preprocess(arrs[j : j + n]) for j in range(0, len(arrs), n)]
    total = sum(len(b) for b in batches)
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    best = float("inf")
    with torch.inference_mode():
        p.logits(batches[0])  # warm-up (cuDNN's choice of kernels)
        for _ in range(rounds):
            sync()
            t = time.perf_counter()
            for b in batches:
                p.logits(b)
            sync()
            best = min(best, time.perf_counter() - t)
    return total / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="frames (default 200)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", default="local,ray1,ray1-plain,ray2",
                    help="any of local, ray1, ray1-plain, ray2 (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=None, help="predict's --batch-size (default: predict's own)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    cores = os.cpu_count() or 1
    gpus = 1 if a.device == "cuda" else 0
    root = Path(tempfile.mkdtemp(prefix="fcnraybench", dir="/tmp"))  # short: Ray's socket paths live under it
    results: dict[str, dict] = {}
    try:
        lst, source = frames(root, a.n)
        common = ["--device", a.device] + (["--batch-size", str(a.batch_size)] if a.batch_size else [])
        for run in runs:
            out = root / f"out-{run}"
            if run == "local":
                results[run] = predict(lst, out, common, dict(os.environ))
            elif run in ("ray1", "ray1-plain", "ray2"):
                c = Cluster(root / run, preload=run != "ray1-plain")
                (root / run).mkdir()
                try:
                    if run == "ray2":
                        c.start(max(1, cores // 2), gpus)
                        c.start(max(1, cores - cores // 2), 0)
                    else:
                        c.start(cores, gpus)
                    time.sleep(SETTLE_S)
                    results[run] = predict(lst, out, common + ["--engine", "ray"],
                                           {**c.env, "RAY_ADDRESS": c.address})
                finally:
                    c.stop()
            else:
                raise SystemExit(f"--runs: unknown run {run!r}; choose from local, ray1, ray1-plain, ray2")
            results[run]["masks"] = masks_digest(out)
            shutil.rmtree(out, ignore_errors=True)
        if a.device == "cuda":
            results["network alone"] = {"job_img_s": network_alone(lst, a.device, a.batch_size)}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    import torch

    gpu = torch.cuda.get_device_name(0) if a.device == "cuda" and torch.cuda.is_available() else "none"
    print(f"machine: {platform.node()}, {cores} cores, GPU {gpu}, torch {torch.__version__}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"frames: {a.n} of {source}; device {a.device}; model fcn8s-compact-camvid")
    print()
    print("| run | images | job img/s | wall s | wall img/s | masks |")
    print("|---|---:|---:|---:|---:|---|")
    label = {"local": "local engine", "ray1": "Ray, 1 node", "ray1-plain": "Ray, 1 node, plain `ray start`",
             "ray2": "Ray, 2 nodes (same machine)",
             "network alone": "network alone (forward only)"}
    for run, r in results.items():
        if run == "network alone":
            print(f"| {label[run]} | {a.n} | {r['job_img_s']:.1f} | | | |")
        else:
            print(f"| {label[run]} | {r['done']} | {r['job_img_s']:.1f} | {r['wall_s']:.1f} | {r['wall_img_s']:.1f} "
                  f"| {r['masks']} |")
    digests = {r["masks"] for k, r in results.items() if "masks" in r}
    print()
    print("same masks in every run: " + ("yes" if len(digests) <= 1 else "NO"))
    if a.json:
        a.json.write_text(json.dumps({"n": a.n, "device": a.device, "source": source, "results": results}, indent=1))


if __name__ == "__main__":
    main()
