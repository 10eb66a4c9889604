"""A million-image job's bookkeeping: resume scan + report assembly, time and peak memory.

    python benchmarks/million.py [--n 1000000] [--size 480x360] [--per-folder 1000] [--keep DIR]

Builds a predict output folder as a finished job leaves it, without running the network: for
``--n`` images, a mask PNG ``OUT/<rel>.png`` (hard links to a few real masks, to build fast)
and one record line each in a segment of the record store ``OUT/.fcn-label/records/*.jsonl``
(``rel`` = ``dddd/nnnnnnn``, ``--per-folder`` per folder). The records are real ones: the
shipped model's outputs for a few CamVid val frames at ``--size`` (RLE and all), written by
Sink.write, replicated with each image's own path and name. Then, in a fresh child
process (so the set-up does not count), it times the resume scan alone (scan_records: one
sequential read of the segments) and ``PredictJob.run`` over the ``--n`` items with
everything done (the scan, then write_reports streaming predictions.csv, predictions.json and
failures.csv), reporting seconds per phase and the peak RSS (ru_maxrss) against the RSS before
the job (imports and model). ``--keep DIR`` builds into DIR and keeps it, so a second
measurement can skip the set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"


def rel_of(i: int, per_folder: int) -> str:
    return f"{i // per_folder:04d}/{i:07d}"


def build(out: Path, n: int, size: tuple[int, int], per_folder: int) -> tuple[int, int]:
    """Write n masks and records; returns (mean record bytes, mask bytes)."""
    import numpy as np
    from PIL import Image

    from fcn_label.checkpoint import SHIPPED, load_checkpoint
    from fcn_label.predict import Item, PredictJob, PredictOptions, Predictor
    from fcn_label.predfolder.layout import STATE_DIR

    w, h = size
    pred = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device="cpu")
    tpl_dir = out.parent / "templates"
    job = PredictJob(pred, PredictOptions(out=tpl_dir))
    rows = [line.split()[0] for line in (CAMVID / "val.txt").read_text().splitlines() if line.strip()][:: 25]
    templates = []
    for k, rel in enumerate(rows[:4]):
        a = np.asarray(Image.open(CAMVID / rel).convert("RGB").resize((w, h), Image.BILINEAR))
        p = pred.predict_arrays([a])[0]
        it = Item(Path(f"/data/in/{k}.png"), f"t{k}")
        job.sink.write(it, a, p, 0.05)
        job.sink.close()
        line = job.sink.records.path.read_bytes().splitlines()[-1]
        templates.append((json.loads(line), job.layout.mask(it.rel)))
    rec_bytes = 0
    made = set()
    (out / STATE_DIR / "records").mkdir(parents=True, exist_ok=True)
    with open(out / STATE_DIR / "records" / "0000000000000000-bench-0-00000000.jsonl", "w", buffering=1 << 22) as seg:
        for i in range(n):
            rec, mask = templates[i % len(templates)]
            rel = rel_of(i, per_folder)
            d = rel.split("/")[0]
            if d not in made:
                (out / d).mkdir(parents=True, exist_ok=True)
                made.add(d)
            r = dict(rec, path=f"/data/in/{rel}.png", file_name=f"{rel}.png")
            text = json.dumps(r) + "\n"
            rec_bytes += len(text)
            first = out / d / f"t{i % len(templates)}.png"  # a link count is limited (65,000 on ext4)
            if not first.exists():
                shutil.copyfile(mask, first)
            os.link(first, out / f"{rel}.png")
            seg.write(text)
            if i and i % 100_000 == 0:
                print(f"  built {i}", flush=True)
    return rec_bytes // max(1, n), templates[0][1].stat().st_size


def measure(out: Path, n: int, per_folder: int) -> dict:
    """In this (fresh) process: the job over n done items; seconds per phase and peak RSS."""
    from fcn_label.checkpoint import SHIPPED, load_checkpoint
    from fcn_label.predict import Item, PredictJob, PredictOptions, Predictor
    from fcn_label.predfolder.records import scan_records

    pred = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device="cpu")
    items = [Item(Path(f"/data/in/{rel_of(i, per_folder)}.png"), rel_of(i, per_folder)) for i in range(n)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job = PredictJob(pred, PredictOptions(out=out))
    t = time.perf_counter()
    done = scan_records(job.layout, [it.rel for it in items]).count
    t_scan = time.perf_counter() - t
    t_load = float("nan")  # no longer a phase: the reports stream the records
    t = time.perf_counter()
    res = job.run(items)  # the real thing: scan + reports (reads the records again)
    t_run = time.perf_counter() - t
    assert done == n and res.skipped == n and res.done == 0, (done, res.skipped)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = {f: (out / f).stat().st_size for f in ("predictions.csv", "predictions.json", "failures.csv")}
    return {"n": n, "scan_s": t_scan, "load_records_s": t_load, "job_run_s": t_run,
            "reports_s_est": max(0.0, t_run - t_scan), "rss_before_mb": rss0 / 1024, "peak_rss_mb": rss1 / 1024,
            "report_bytes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--size", default="480x360", help="W x H of the images the records describe")
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--keep", type=Path, help="build into (or reuse) this folder and keep it")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.n, a.per_folder)))
        return
    w, h = (int(v) for v in a.size.lower().split("x"))
    root = a.keep or Path(tempfile.mkdtemp(prefix="fcn-million-"))
    out = root / "out"
    try:
        marker = root / f"built-{a.n}-{a.size}-{a.per_folder}"
        if not marker.exists():
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            rec_b, mask_b = build(out, a.n, (w, h), a.per_folder)
            marker.write_text(json.dumps({"record_bytes": rec_b, "mask_bytes": mask_b}))
            print(f"built {a.n} records (~{rec_b} B each) + masks ({mask_b} B) in {time.perf_counter() - t:.0f} s",
                  flush=True)
        info = json.loads(marker.read_text())
        env = dict(os.environ, PYTHONPATH=str(REPO))
        r = subprocess.run([sys.executable, __file__, "--measure", str(out), "--n", str(a.n),
                            "--per-folder", str(a.per_folder)], check=True, env=env, capture_output=True, text=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"\n{a.n} images of {a.size}, records ~{info['record_bytes']} B, {a.per_folder} per folder")
        print("| phase | seconds |")
        print("|---|---|")
        print(f"| resume scan (scan_records: read the segments) | {m['scan_s']:.1f} |")
        print(f"| PredictJob.run, all done (scan + streamed reports) | {m['job_run_s']:.1f} |")
        print(f"| peak RSS / before the job (MB) | {m['peak_rss_mb']:.0f} / {m['rss_before_mb']:.0f} |")
        print("report sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in m["report_bytes"].items()))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
