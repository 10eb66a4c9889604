"""Fixed cost per image: many tiny images end to end, and a re-run with nothing left to do.

    python benchmarks/tiny_images.py [--images 2000] [--size 64x48] [--workers 1] [--profile]

Builds ``--images`` images of ``--size`` (W x H), half PNG and half JPEG, cut from CamVid
frames (synthetic when the data is absent), then times with the shipped model on the CPU:

* end to end: ``PredictJob.run`` on all of them (fresh --out), img/s;
* no-op re-run: the same job again, every image already done (resume scan + reports);
* the same no-op re-run through the CLI (``python -m fcn_label predict``), which adds start-up
  (imports, model load) to it.

``--profile`` prints the main thread's top functions (cProfile, cumulative) for the end-to-end
run: where the fixed cost per image goes (the writer threads are not in it; their work shows
as waiting in ``Future.result``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fcn_label.predict import PredictJob, PredictOptions, discover  # noqa: E402
from fcn_label.predict import Predictor  # noqa: E402
from fcn_label.checkpoint import SHIPPED, load_checkpoint  # noqa: E402

CAMVID = Path(os.environ.get("FCN_LABEL_SHARED", REPO.parent / "shared")) / "data" / "camvid"


def make_images(folder: Path, n: int, w: int, h: int) -> None:
    folder.mkdir(parents=True)
    frames = sorted((CAMVID / "train").glob("*.png"))[:50]
    rng = np.random.default_rng(0)
    big = [np.asarray(Image.open(f).convert("RGB")) for f in frames]
    for i in range(n):
        if big:
            a = big[i % len(big)]
            y, x = rng.integers(0, a.shape[0] - 4 * h), rng.integers(0, a.shape[1] - 4 * w)
            im = Image.fromarray(a[y:y + 4 * h, x:x + 4 * w]).resize((w, h), Image.BILINEAR)
        else:
            im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        im.save(folder / (f"{i:05d}.jpg" if i % 2 else f"{i:05d}.png"), quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", default="64x48", help="W x H")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", type=int, default=None, help="predict --parallel encoders=N (default: predict's)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI no-op re-run")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fcn-tiny-"))
    try:
        src, out = tmp / "in", tmp / "out"
        t = time.perf_counter()
        make_images(src, a.images, w, h)
        print(f"made {a.images} {w}x{h} images in {time.perf_counter() - t:.1f} s", flush=True)
        pred = Predictor(load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path), device="cpu")
        pred.predict_arrays([np.zeros((h, w, 3), np.uint8)])  # warm-up
        opts = PredictOptions(out=out, workers=a.workers, encoders=a.encoders)

        t = time.perf_counter()
        items, _ = discover([src], out)
        t_disc = time.perf_counter() - t
        prof = cProfile.Profile() if a.profile else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        res = PredictJob(pred, opts).run(items)
        if prof:
            prof.disable()
        t_run = time.perf_counter() - t
        assert res.done == a.images and not res.failed, (res.done, res.failed[:3])

        t = time.perf_counter()
        items, _ = discover([src], out)
        res2 = PredictJob(pred, opts).run(items)
        t_noop = time.perf_counter() - t
        assert res2.skipped == a.images and res2.done == 0

        t_cli = None
        if not a.no_cli:
            env = dict(os.environ, PYTHONPATH=str(REPO))
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fcn_label", "predict", str(src), "--out", str(out), "--device", "cpu"],
                           check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t_cli = time.perf_counter() - t
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import fcn_label.cli"], check=True, env=env)
            t_import = time.perf_counter() - t

        print(f"\n{a.images} images {w}x{h} (half PNG, half JPEG), workers {a.workers}, encoders {a.encoders}, {a.threads} threads")
        print("| measure | seconds | img/s |")
        print("|---|---|---|")
        print(f"| discover | {t_disc:.2f} | |")
        print(f"| end to end (PredictJob.run) | {t_run:.2f} | {a.images / t_run:.1f} |")
        print(f"| no-op re-run (discover + run) | {t_noop:.2f} | |")
        if t_cli is not None:
            print(f"| no-op re-run via CLI (incl. start-up) | {t_cli:.2f} | |")
            print(f"| of which `import fcn_label.cli` alone | {t_import:.2f} | |")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(s.getvalue())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
