"""A huge job's bookkeeping with --out on S3: resume scan + report assembly, time and peak memory.

    python benchmarks/million_s3.py [--n 100000] [--size 480x360] [--lines 256] [--endpoint URL --bucket B]

The object-store twin of benchmarks/million.py. It starts a local S3 server (moto, own process
group, 127.0.0.1; ``pip install "fcn-label[scale-test]"``) unless ``--endpoint`` names one (then
``--bucket`` must exist and the usual AWS_* variables hold its credentials), and fills
``s3://BUCKET/out/.fcn-label/records/`` with ``--n`` real records as a finished job leaves them:
immutable segment objects of ``--lines`` records each (predict's default flush size). The records
are the shipped model's outputs for a few CamVid val frames at ``--size`` (RLE and all; random
pictures when CamVid is absent), replicated with each image's own path and name. No mask objects
are put: the scan and the reports read only the records.

Then, in a fresh child process, it times the resume scan alone (mirroring the segments to a
local temporary folder, then scan_records) and ``PredictJob.run`` over the ``--n`` items with
everything done (mirror + scan, then the reports: streamed into the mirror and uploaded, then
the re-scan rule's second listing), with the peak RSS (ru_maxrss) against the RSS before the job.

The default --n is 100,000: moto keeps every object in memory (or its own temporary files), about
--n x 8 KB of records plus the same again for predictions.json, and it joins a multipart upload's
parts in memory, so a million images (a 7.4 GB predictions.json) take it past 22 GB. For the
million-image figure use a store that keeps objects on disk through ``--endpoint``; the Performance
page's figure used s3rver (npm, ``npm install s3rver@3.7.1``; about 15 GB of disk), started as

    NODE_OPTIONS=--openssl-legacy-provider s3rver -s -d DIR -a 127.0.0.1 -p 4569 --configure-bucket fcn-bench
    AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1 \
        python benchmarks/million_s3.py --n 1000000 --endpoint http://127.0.0.1:4569 --bucket fcn-bench

(on Node.js 17 and newer s3rver's listing continuation tokens need OpenSSL's legacy DES cipher).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from million import rel_of  # noqa: E402 - the local twin's key layout, so both benchmarks name the same images

CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"


def templates(size: tuple[int, int]) -> list[dict]:
    """Four real records (the shipped model on CamVid val frames, or on random pictures without CamVid)."""
    import numpy as np
    from PIL import Image

    from fcn_label.checkpoint import SHIPPED, load_checkpoint
    from fcn_label.predict import Item, PredictJob, PredictOptions, Predictor

    w, h = size
    pred = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="fcn-million-s3-tpl-"))
    try:
        job = PredictJob(pred, PredictOptions(out=tmp))
        if (CAMVID / "val.txt").is_file():
            rows = [ln.split()[0] for ln in (CAMVID / "val.txt").read_text().splitlines() if ln.strip()][::25][:4]
            arrays = [np.asarray(Image.open(CAMVID / r).convert("RGB").resize((w, h), Image.BILINEAR)) for r in rows]
        else:
            print("CamVid not found: records of random pictures (their RLE is not typical)", flush=True)
            rng = np.random.default_rng(0)
            arrays = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(4)]
        out = []
        for k, a in enumerate(arrays):
            p = pred.predict_arrays([a])[0]
            out.append(job.sink.write_outputs(Item(Path(f"/data/in/{k}.png"), f"t{k}"), a, p, 0.05))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(url: str, n: int, size: tuple[int, int], per_folder: int, lines: int) -> int:
    """Put n records as segment objects of ``lines`` lines; returns the mean record bytes."""
    from fcn_label.predfolder.layout import RECORDS_DIR
    from fcn_label.predfolder.version import FORMAT_NAME, FORMAT_VERSION
    from fcn_label.storage import open_store

    store = open_store(url)
    store.write_bytes(".fcn-label/format.json",
                      (json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n").encode())
    tpl = templates(size)
    total, batch = 0, {}
    for s, start in enumerate(range(0, n, lines)):
        buf = []
        for i in range(start, min(n, start + lines)):
            rel = rel_of(i, per_folder)
            buf.append(json.dumps(dict(tpl[i % len(tpl)], path=f"s3://bench-in/{rel}.png", file_name=f"{rel}.png")))
        data = ("\n".join(buf) + "\n").encode()
        total += len(data)
        batch[store.path_of(f"{RECORDS_DIR}/0000000000000000-bench-0-00000000-{s + 1:06d}.jsonl")] = data
        if len(batch) >= 64:
            store.fs.pipe(batch)  # concurrent puts
            batch = {}
        if start and start % 100_000 < lines:
            print(f"  built {start}", flush=True)
    if batch:
        store.fs.pipe(batch)
    return total // max(1, n)


def measure(url: str, n: int, per_folder: int) -> dict:
    """In this (fresh) process: the job over n done items; seconds per phase and peak RSS."""
    from fcn_label.checkpoint import SHIPPED, load_checkpoint
    from fcn_label.predfolder.records import scan_records
    from fcn_label.predict import Item, PredictJob, PredictOptions, Predictor
    from fcn_label.storage import ObjectUrl

    pred = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device="cpu")
    items = [Item(ObjectUrl(f"s3://bench-in/{rel_of(i, per_folder)}.png"), rel_of(i, per_folder)) for i in range(n)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job = PredictJob(pred, PredictOptions(out=url))
    t = time.perf_counter()
    job.remote.sync(job.layout)  # the resume scan: mirror the segments, then read them
    t_sync = time.perf_counter() - t
    done = scan_records(job.layout, [it.rel for it in items]).count
    t_scan = time.perf_counter() - t
    shutil.rmtree(job.mirror, ignore_errors=True)  # run() starts from an empty mirror, as a real re-run does
    t = time.perf_counter()
    res = job.run(items)
    t_run = time.perf_counter() - t
    assert done == n and res.skipped == n and res.done == 0, (done, res.skipped)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = {f: job.remote.store.fs.size(job.remote.store.path_of(f))
             for f in ("predictions.csv", "predictions.json", "failures.csv")}
    return {"n": n, "sync_s": t_sync, "scan_s": t_scan, "job_run_s": t_run, "rss_before_mb": rss0 / 1024,
            "peak_rss_mb": rss1 / 1024, "report_bytes": sizes}


def start_moto() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        sys.exit('moto_server not installed: pip install "fcn-label[scale-test]" (or give --endpoint)')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None:
                sys.exit("moto_server did not start")
            time.sleep(0.2)
    sys.exit("moto_server did not answer in 60 s")


def stop_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", default="480x360", help="W x H of the images the records describe")
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--lines", type=int, default=256, help="records per segment object (predict's flush size)")
    ap.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto (AWS_* credentials)")
    ap.add_argument("--bucket", default="fcn-bench", help="bucket (created on moto; must exist with --endpoint)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: the --out URL
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.n, a.per_folder)))
        return
    w, h = (int(v) for v in a.size.lower().split("x"))
    proc = None
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if a.endpoint:
        env["AWS_ENDPOINT_URL"] = a.endpoint
    else:
        proc, endpoint = start_moto()
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    os.environ.update(env)
    url = f"s3://{a.bucket}/million-{a.n}-{time.time_ns():x}"
    try:
        if proc is not None:
            from fcn_label.storage import open_store

            open_store(f"s3://{a.bucket}").fs.mkdir(a.bucket)
        t = time.perf_counter()
        rec_b = build(url, a.n, (w, h), a.per_folder, a.lines)
        print(f"put {a.n} records (~{rec_b} B each) in {-(-a.n // a.lines)} segments in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        r = subprocess.run([sys.executable, __file__, "--measure", url, "--n", str(a.n),
                            "--per-folder", str(a.per_folder)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"\n{a.n} images of {a.size}, records ~{rec_b} B, {a.lines} per segment, --out on "
              f"{'moto (local)' if proc is not None else a.endpoint}")
        print("| phase | seconds |")
        print("|---|---|")
        print(f"| resume scan: mirror the segments (download) | {m['sync_s']:.1f} |")
        print(f"| resume scan: mirror + scan_records | {m['scan_s']:.1f} |")
        print(f"| PredictJob.run, all done (mirror, scan, reports, upload, re-list) | {m['job_run_s']:.1f} |")
        print(f"| peak RSS / before the job (MB) | {m['peak_rss_mb']:.0f} / {m['rss_before_mb']:.0f} |")
        print("report sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in m["report_bytes"].items()))
    finally:
        if proc is not None:
            stop_group(proc)


if __name__ == "__main__":
    main()
