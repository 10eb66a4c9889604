"""Peak memory of `predict` on one huge photo and on a folder of mixed sizes, and tiled vs untiled labels.

    python benchmarks/memory.py [--scenario big|folder|agreement|all] [--images 200] [--big 12000x9000]

Each scenario runs in a fresh Python process (so one scenario's peak cannot hide
another's) through the real :class:`~fcn_label.predict.PredictJob` with the CLI's
defaults (2 decoding workers, batch 8, 1024-pixel tiles above 2 Mpx), and reports:

* ``main peak``: VmHWM of the predicting process (exact, from /proc/self/status);
* ``with workers``: the largest sum of RSS over that process and its decoding
  workers, sampled every 20 ms (shared library pages count once per process, so
  this overstates the true total);
* ``idle``: RSS after imports and model load, before the first image.

The model is the compact CamVid FCN-8s (VGG16 widths x0.25, BatchNorm, fc 512,
'same' padding, 11 classes): the shipped ``pretrained/fcn8s-compact-camvid.pt``
when present, else the same architecture randomly initialised (labels then mean
nothing, memory and the tiled/untiled comparison still do). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CAMVID_VAL = REPO.parent / "shared" / "data" / "camvid" / "val"
# (height, width) cycled over the folder: phone, camera, video and scan sizes, 1-pixel strips, and
# photos large enough to be tiled
FOLDER_SIZES = [(360, 480), (720, 960), (1080, 1920), (480, 640), (1, 500), (600, 1), (375, 500), (768, 1024),
                (1200, 1600), (240, 320), (300, 400), (512, 512)]
FOLDER_LARGE = (3000, 4000)  # a 12 Mpx phone photo, every 50th image


def status_kb(pid: int | str, key: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            try:
                kids = [int(k) for k in open(f"/proc/{p}/task/{task}/children").read().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
    return out


class Sampler(threading.Thread):
    """Largest RSS of this process plus its children seen so far, every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.worker_peak_kb = 0
        self.stop = False

    def run(self):
        me = os.getpid()
        while not self.stop:
            kids = descendants(me)
            w = sum(status_kb(k, "VmRSS") for k in kids)
            self.worker_peak_kb = max(self.worker_peak_kb, max((status_kb(k, "VmRSS") for k in kids), default=0))
            self.peak_kb = max(self.peak_kb, status_kb(me, "VmRSS") + w)
            time.sleep(0.02)


def checkpoint():
    from fcn_label.model import FCN, FCNConfig
    from fcn_label.checkpoint import SHIPPED, Checkpoint, load_checkpoint
    from fcn_label.classes import voc_palette

    path = SHIPPED["fcn8s-compact-camvid"].path
    if path.is_file():
        return load_checkpoint(path), f"shipped {path.name}"
    import torch

    torch.manual_seed(0)
    cfg = FCNConfig(arch="fcn8s", num_classes=11, width=0.25, fc_channels=512, batch_norm=True, padding="same")
    m = FCN(cfg)
    for name, mod in m.named_modules():  # the paper zero-inits score layers: every pixel would be class 0
        if name.startswith("score") and isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight)
    return (Checkpoint(cfg, m.state_dict(), [f"c{i}" for i in range(11)], voc_palette()[:11]),
            "compact FCN-8s config, random weights (pretrained/fcn8s-compact-camvid.pt absent)")


def scene(h: int, w: int, seed: int) -> Image.Image:
    """A CamVid frame resized to (h, w) when ../shared is present, else smooth colour noise."""
    frames = sorted(CAMVID_VAL.glob("*.png")) if CAMVID_VAL.is_dir() else []
    if frames:
        return Image.open(frames[seed % len(frames)]).convert("RGB").resize((w, h), Image.BILINEAR)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, h // 64) + 1, max(1, w // 64) + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


# -- children: one scenario each, in a fresh process ------------------------------------------------


def child_predict(folder: Path, out: Path) -> dict:
    import torch

    from fcn_label.predict import PredictJob, PredictOptions, discover
    from fcn_label.predict import Predictor

    ck, source = checkpoint()
    pred = Predictor(ck, device="cpu")
    idle = status_kb("self", "VmRSS")
    sampler = Sampler()
    sampler.start()
    marks = {}

    def on_progress(done, total):
        if done and (done % 25 == 0 or done == total):
            marks[done] = status_kb("self", "VmHWM")

    items, problems = discover([folder], out)
    t = time.perf_counter()
    res = PredictJob(pred, PredictOptions(out=out), on_progress=on_progress).run(items, problems)
    seconds = time.perf_counter() - t
    time.sleep(0.05)
    sampler.stop = True
    assert res.done == len(items) and not res.failed, res.failed
    return {"images": res.done, "seconds": round(seconds, 1), "model": source, "threads": torch.get_num_threads(),
            "idle_mb": idle // 1024, "main_peak_mb": status_kb("self", "VmHWM") // 1024,
            "peak_after_n_images_mb": {str(k): v // 1024 for k, v in sorted(marks.items())},
            "with_workers_peak_mb": sampler.peak_kb // 1024, "largest_worker_mb": sampler.worker_peak_kb // 1024}


def child_agreement(path: Path) -> dict:
    from fcn_label.images import read_image
    from fcn_label.predict import Predictor

    ck, source = checkpoint()
    img = read_image(path)
    full = Predictor(ck, device="cpu", tile_threshold=10**12).predict_arrays([img])[0].labels
    shares = np.bincount(full.ravel(), minlength=ck.config.num_classes) / full.size
    out = {"size": f"{img.shape[1]}x{img.shape[0]}", "model": source,
           "classes_present": int((shares > 0).sum()), "largest_class_pct": round(100 * float(shares.max()), 1)}
    for tile in (1024, 512):
        pred = Predictor(ck, device="cpu", tile=tile, tile_overlap=0.25)
        tiled = pred.predict_arrays([img])[0].labels
        differ = tiled != full
        # pixels within 64 px of a tile's inner edge: where a tile's missing context changes its view
        _, ys, xs = pred.tile_grid(*full.shape)
        seam = np.zeros(full.shape, bool)
        for y in ys:
            for e in {y, min(y + tile, full.shape[0])} - {0, full.shape[0]}:
                seam[max(0, e - 64) : e + 64] = True
        for x in xs:
            for e in {x, min(x + tile, full.shape[1])} - {0, full.shape[1]}:
                seam[:, max(0, e - 64) : e + 64] = True
        out[f"tile_{tile}_equal_pct"] = round(100.0 * float((~differ).mean()), 3)
        out[f"tile_{tile}_differences_near_seams_pct"] = round(100.0 * float(differ[seam].sum() / max(1, differ.sum())), 1)
        out[f"tile_{tile}_seam_area_pct"] = round(100.0 * float(seam.mean()), 1)
    return out


# -- parent ----------------------------------------------------------------------------------------


def run_child(args: list[str], timeout: int = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="all", choices=["big", "folder", "agreement", "all"])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--big", default="12000x9000", help="WxH of the huge photo")
    ap.add_argument("--agree", default="2400x1800", help="WxH of the image predicted both tiled and untiled")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        res = child_predict(Path(rest[0]), Path(rest[1])) if kind == "predict" else child_agreement(Path(rest[0]))
        print(json.dumps(res))
        return

    results = {"hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.scenario in ("big", "all"):
            w, h = map(int, a.big.lower().split("x"))
            (tmp / "big").mkdir()
            scene(h, w, 0).save(tmp / "big" / "huge.jpg", quality=90)
            results["big"] = {"size": f"{w}x{h}", **run_child(["predict", str(tmp / "big"), str(tmp / "out_big")])}
            print(json.dumps(results["big"]), flush=True)
        if a.scenario in ("folder", "all"):
            d = tmp / "folder"
            d.mkdir()
            for i in range(a.images):
                hh, ww = FOLDER_LARGE if i % 50 == 49 else FOLDER_SIZES[i % len(FOLDER_SIZES)]
                scene(hh, ww, i).save(d / (f"{i:04d}.jpg" if i % 2 else f"{i:04d}.png"), quality=90)
            results["folder"] = {"sizes": f"{len(FOLDER_SIZES)} sizes from 1x500 to 1920x1080, "
                                          f"plus {a.images // 50} of {FOLDER_LARGE[1]}x{FOLDER_LARGE[0]}",
                                 **run_child(["predict", str(d), str(tmp / "out_folder")])}
            print(json.dumps(results["folder"]), flush=True)
        if a.scenario in ("agreement", "all"):
            w, h = map(int, a.agree.lower().split("x"))
            scene(h, w, 3).save(tmp / "agree.png")
            results["agreement"] = run_child(["agreement", str(tmp / "agree.png")])
            print(json.dumps(results["agreement"]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
