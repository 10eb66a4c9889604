"""End-to-end `predict` throughput vs the model alone vs a naive one-image loop.

    python benchmarks/predict_speed.py [--model compact|vgg16|both|none] [--images N] [--device cpu|cuda] [--amp]
                                       [--workers 1,2] [--formats mixed|png|jpeg] [--jpeg-decoder pillow,device]

``--model none`` swaps the network for a stand-in that costs nothing (it replays the compact
model's logits for each image size, computed once during warm-up, so label maps, PNGs and RLEs
are as costly as real ones): end to end is then the host pipeline's ceiling (decoding,
batching, softmax/argmax, palette PNG, RLE, records, reports). ``--workers`` takes a list
(``1,2``) to run end to end once per value on the same images.

Builds a folder of mixed-size images (CamVid val frames resized to several sizes
when ../shared is present, else synthetic), then times:

* model only: the network's forward pass (logits) on pre-decoded, pre-normalised tensors, batched by size;
* naive loop: open, convert, normalise, forward, argmax, save PNG, one image at a time;
* end to end: the real `PredictJob` (background decoding, batching, PNG + COCO + CSV outputs).

Prints a Markdown table; numbers depend on the machine, so say which one ran it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label.predict import PredictJob, PredictOptions, discover  # noqa: E402
from fcn_label.predict.parallel import default_workers  # noqa: E402
from fcn_label.model import FCN, FCNConfig  # noqa: E402
from fcn_label.predict import Predictor  # noqa: E402
from fcn_label.checkpoint import SHIPPED, Checkpoint, load_checkpoint  # noqa: E402
from fcn_label.classes import voc_palette  # noqa: E402

SIZES = [(360, 480), (375, 500), (480, 640), (257, 333), (360, 480), (375, 500)]
CAMVID = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "camvid"


def make_folder(root: Path, n: int, sizes, formats: str = "mixed") -> Path:
    """n CamVid val frames (random pixels without the data): every other one JPEG (mixed), or all PNG, or all JPEG."""
    src = CAMVID / "val"
    frames = sorted(src.glob("*.png"))[:n] if src.is_dir() else []
    d = root / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        if frames:
            im = Image.open(frames[i % len(frames)]).convert("RGB").resize((w, h), Image.BILINEAR)
        else:
            im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        jpeg = formats == "jpeg" or (formats == "mixed" and i % 2)
        im.save(d / f"{i:04d}.jpg" if jpeg else d / f"{i:04d}.png", quality=92)
    return d


def model_checkpoint(kind: str) -> Checkpoint:
    if kind == "compact" and SHIPPED["fcn8s-compact-camvid"].path.is_file():
        return load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path)
    cfg = (FCNConfig(arch="fcn8s", num_classes=11, width=0.25, fc_channels=512, batch_norm=True, padding="same")
           if kind == "compact" else FCNConfig(arch="fcn8s", num_classes=21))
    m = FCN(cfg)
    return Checkpoint(cfg, m.state_dict(), [f"c{i}" for i in range(cfg.num_classes)], voc_palette()[: cfg.num_classes])


class StandIn(torch.nn.Module):
    """A network that costs nothing: the real model's logits for a size, computed once and replayed."""

    def __init__(self, real: torch.nn.Module):
        super().__init__()
        self.real, self.cache = real, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape[-2:])
        if key not in self.cache:
            self.cache[key] = self.real(x[:1])
        y = self.cache[key]
        return y.expand(x.shape[0], -1, -1, -1) if x.shape[0] > 1 else y


def calibration_arrays(n: int = 32) -> list[np.ndarray]:
    """CamVid TRAIN frames for the ort-int8 backend (never the benchmark's own val-derived images)."""
    listing = CAMVID / "train.txt"
    if not listing.is_file():
        raise SystemExit(f"ort-int8 calibrates on CamVid train frames: {listing} not found")
    lines = [ln.split()[0] for ln in listing.read_text().splitlines() if ln.strip()]
    picks = lines[:: max(1, len(lines) // n)][:n]
    return [np.asarray(Image.open(CAMVID / f).convert("RGB")) for f in picks]


def bench(kind: str, n: int, device: str, amp: bool, batch: int | None, workers: int | None, sizes=None,
          backend: str = "eager", encoders: int | None = None, procs: int | None = None,
          formats: str = "mixed", jpeg_decoder: str = "pillow") -> dict:
    ck = model_checkpoint("compact" if kind == "none" else kind)
    t0 = time.perf_counter()
    calib = calibration_arrays() if backend == "ort-int8" else ()
    pred = Predictor(ck, device=device, amp=amp, backend=backend, calib=calib)
    setup_s = time.perf_counter() - t0
    if kind == "none":
        pred.model = StandIn(pred.model)
    # the baseline of issue 14: a plain float32 forward of the same checkpoint (as built, BatchNorm not
    # folded, NCHW), on the same normalised tensors
    plain = ck.build(pred.device).eval()
    asked = batch  # None: predict's own default (by pixel count on the CPU)
    batch = batch or pred.default_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_folder(tmp, n, sizes or (SIZES if kind in ("compact", "none") or device != "cpu" else SIZES[:2]),
                             formats)
        files = sorted(folder.iterdir())
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        pixels = sum(a.shape[0] * a.shape[1] for a in arrays)

        # warm-up (allocator, cuDNN algorithm choice): every size once
        pred.predict_arrays(list({a.shape: a for a in arrays}.values()), batch)
        if jpeg_decoder == "device":  # and the decoder: loading torchvision's image library takes ~1.4 s here
            from fcn_label.predict.decoding import _read_jpeg, decode_jpegs
            first = next(f for f in files if f.suffix == ".jpg")
            decode_jpegs([_read_jpeg(first, 10**9)], pred.device)
        # model only: forward pass on pre-normalised tensors, grouped by size
        groups: dict[tuple, list[np.ndarray]] = {}
        for a in arrays:
            groups.setdefault(a.shape, []).append(a)
        tensors = [pred.preprocess(g[i:i + batch]) for g in groups.values() for i in range(0, len(g), batch)]
        _sync(device)
        t = time.perf_counter()
        for x in tensors:
            pred.logits(x)
        _sync(device)
        model_only = n / (time.perf_counter() - t)
        plain_fwd = float("nan")
        if kind != "none":
            nchw = [x.contiguous() for x in tensors]
            with torch.inference_mode():
                plain(nchw[0])  # warm-up
                _sync(device)
                t = time.perf_counter()
                for x in nchw:
                    plain(x)
                _sync(device)
            plain_fwd = n / (time.perf_counter() - t)

        # naive loop
        out = tmp / "naive"
        out.mkdir()
        t = time.perf_counter()
        for f in files:
            a = np.asarray(Image.open(f).convert("RGB"))
            p = pred.postprocess(pred.forward(pred.preprocess([a])))[0]
            Image.fromarray(p.labels, mode="L").save(out / f"{f.stem}.png")
        _sync(device)
        naive = n / (time.perf_counter() - t)

        # end to end
        items, _ = discover([folder], tmp / "out")
        job = PredictJob(pred, PredictOptions(out=tmp / "out", batch_size=asked, workers=workers,
                                                encoders=encoders, procs=procs,
                                                jpeg_device=str(pred.device) if jpeg_decoder == "device" else None))
        r0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t = time.perf_counter()
        res = job.run(items)
        e2e = res.done / (time.perf_counter() - t)
        r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        # CPU time of this process and of its finished children (inference processes, encoders, decoding
        # workers), per image: what the job costs the machine, beside how fast it went
        cpu_ms = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1)) / n * 1e3
        assert res.done == n and not res.failed
    procs = job.procs_for(n)
    return {"model": kind, "backend": backend, "images": n, "mpx_per_image": pixels / n / 1e6, "procs": procs,
            "device": str(pred.device), "amp": pred.amp, "batch": batch, "formats": formats, "jpeg_decoder": jpeg_decoder,
            "workers": workers if workers is not None else f"default ({default_workers(pred.device)})", "encoders": encoders, "setup_s": setup_s,
            "plain_forward_img_s": plain_fwd, "model_only_img_s": model_only, "naive_img_s": naive,
            "end_to_end_img_s": e2e, "end_to_end_cpu_ms_per_img": cpu_ms, "e2e_vs_model": e2e / model_only, "e2e_vs_plain": e2e / plain_fwd}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", choices=["compact", "vgg16", "both", "none"],
                    help="none: a stand-in network that costs nothing (the host pipeline's ceiling)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--vgg-images", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--batch-size", type=int, default=None, help="default: predict's (1 on CPU, 8 on GPU)")
    ap.add_argument("--workers", default="1", help="decoding workers; a list (1,2) runs end to end once per value; default: predict's")
    ap.add_argument("--encoders", default="default",
                    help="predict --parallel encoders=N; a list (0,2) runs end to end once per value; default: predict's")
    ap.add_argument("--procs", default="default",
                    help="predict --parallel procs=N; a list (1,2) runs end to end once per value; default: predict's")
    ap.add_argument("--size", help="one size for every image, HxW (e.g. 360x480); default: mixed sizes")
    ap.add_argument("--backends", default="eager",
                    help="predict --backend kinds, comma-separated (eager, bf16, ort-int8); ort-int8 calibrates "
                         "on 32 CamVid train frames")
    ap.add_argument("--png-decoder", default="auto",
                    help="auto: libspng where the png extra is installed, else Pillow; pillow: Pillow only; "
                         "a list (auto,pillow) runs end to end once per value")
    ap.add_argument("--formats", default="mixed", choices=["mixed", "png", "jpeg"],
                    help="mixed: every other image JPEG (quality 92); png: all PNG; jpeg: all JPEG")
    ap.add_argument("--jpeg-decoder", default="pillow",
                    help="pillow: in the decoding workers; device: in batches on --device (predict --gpu-jpeg on "
                         "CUDA); a list (pillow,device) runs end to end once per value")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from fcn_label import images
    has_spng = importlib.util.find_spec("pyspng") is not None  # the child processes decode, not this one
    rows = []
    for kind in (["compact", "vgg16"] if a.model == "both" else [a.model]):
        n = a.vgg_images if kind == "vgg16" else a.images
        sizes = [tuple(int(v) for v in a.size.lower().split("x"))] if a.size else None
        for backend in a.backends.split(","):
            for workers in (None if w == "default" else int(w) for w in str(a.workers).split(",")):
                for enc in a.encoders.split(","):
                    for procs in a.procs.split(","):
                        for decoder in a.png_decoder.split(","):
                            if decoder not in ("auto", "pillow"):
                                ap.error(f"--png-decoder {decoder!r}: use auto or pillow")
                            for jdec in a.jpeg_decoder.split(","):
                                if jdec not in ("pillow", "device"):
                                    ap.error(f"--jpeg-decoder {jdec!r}: use pillow or device")
                                images._spng = None if decoder == "auto" else False  # None: probe for pyspng
                                rows.append(bench(kind, n, a.device, a.amp, a.batch_size, workers, sizes, backend,
                                                  None if enc == "default" else int(enc),
                                                  None if procs == "default" else int(procs), a.formats, jdec))
                                rows[-1]["png_decoder"] = "Pillow" if decoder == "pillow" or not has_spng else "libspng"
    hw = (torch.cuda.get_device_name() if a.device.startswith("cuda") else
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"hardware: {hw}")
    files = {"png": "all PNG", "jpeg": "all JPEG (quality 92)"}.get(a.formats, "every other one JPEG (quality 92), the rest PNG")
    print(f"files: {files}")
    print("| model | backend | device | images | Mpx/img | batch | procs | workers | PNG decoder | JPEG decoder | "
          "plain fp32 forward (img/s) | backend forward (img/s) | naive loop (img/s) | end to end (img/s) | "
          "e2e CPU ms/img | e2e / plain forward |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['device']}{' AMP' if r['amp'] else ''} | {r['images']} | "
              f"{r['mpx_per_image']:.2f} | {r['batch']} | {r['procs']} | {r['workers']}{'' if r['encoders'] is None else ' (encoders %d)' % r['encoders']} | {r['png_decoder']} | "
              f"{'batched on ' + r['device'] if r['jpeg_decoder'] == 'device' else 'Pillow'} | {r['plain_forward_img_s']:.2f} | "
              f"{r['model_only_img_s']:.2f} | {r['naive_img_s']:.2f} | {r['end_to_end_img_s']:.2f} | "
              f"{r['end_to_end_cpu_ms_per_img']:.1f} | "
              f"{r['e2e_vs_plain']:.2f}x |")
    if a.json:
        a.json.write_text(json.dumps({"hardware": hw, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
