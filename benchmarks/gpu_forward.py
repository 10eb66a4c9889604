"""The network alone on a GPU: precisions, layouts, compile / CUDA graphs, side by side.

    python benchmarks/gpu_forward.py [--model vgg16,compact] [--size 375x500] [--batch 16,32]
                                     [--variants all] [--rounds 5] [--budget 150] [--device cuda]

Variants (each on the same random input, batch and size; cudnn.benchmark on for all):

* fp32        float32, TF32 off
* tf32        float32 with TF32 matmul/conv
* amp16       torch.autocast float16 (what ``predict --amp`` does), weights stay float32
* amp_bf16    torch.autocast bfloat16
* half16      weights and input converted to float16 once (no per-call weight casts)
* half_bf16   the same in bfloat16
* *_nchw      the same as the variant without suffix but NCHW instead of channels_last
* compile16   half16 through torch.compile (default mode)
* graphs16    half16 through torch.compile(mode="reduce-overhead") (CUDA graphs; sizes repeat)

amp16 against half16 answers why AMP was slower than TF32 for VGG16: autocast casts every
weight to float16 on every call (fc6 alone is 103 M parameters), half16 casts them once. Also
``--decode N`` times decoding N 480x360 JPEGs with PIL on one CPU thread against
``torchvision.io.decode_jpeg(device="cuda")`` in one batch.

Interleaved rounds, fastest round per variant; ``--budget`` seconds caps the whole run (the
remaining variants are reported as skipped). ``--device cpu`` runs every code path at a small
size for checking the script without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_label.model import FCN, FCNConfig  # noqa: E402
from fcn_label.checkpoint import SHIPPED, load_checkpoint  # noqa: E402

VARIANTS = ["fp32", "tf32", "amp16", "amp_bf16", "half16", "half_bf16", "tf32_nchw", "half16_nchw",
            "compile16", "graphs16"]


def build_model(kind: str, device: torch.device) -> FCN:
    if kind == "compact" and SHIPPED["fcn8s-compact-camvid"].path.is_file():
        m = load_checkpoint(SHIPPED["fcn8s-compact-camvid"].path).build()
    elif kind == "compact":
        m = FCN(FCNConfig(arch="fcn8s", num_classes=11, width=0.25, fc_channels=512, batch_norm=True, padding="same"))
    else:
        m = FCN(FCNConfig(arch="fcn8s", num_classes=21))
    return m.eval().fold_batch_norm().to(device)


def variant(base: FCN, name: str, device: torch.device):
    """(callable, input dtype, memory format) for one variant."""
    cl = not name.endswith("_nchw")
    fmt = torch.channels_last if cl else torch.contiguous_format
    name = name.removesuffix("_nchw")
    m = copy.deepcopy(base).to(memory_format=fmt)
    dt = torch.float32
    amp = None
    if name in ("half16", "compile16", "graphs16"):
        dt = torch.float16 if device.type == "cuda" else torch.bfloat16  # CPU: fp16 convs are not all there
    elif name == "half_bf16":
        dt = torch.bfloat16
    elif name == "amp16":
        amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    elif name == "amp_bf16":
        amp = torch.bfloat16
    m = m.to(dt)
    tf32 = name != "fp32"
    fn = m
    if name == "compile16":
        fn = torch.compile(m)
    elif name == "graphs16":
        fn = torch.compile(m, mode="reduce-overhead")

    def run(x):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return fn(x)
    return run, dt, fmt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_bench(n: int, device: torch.device) -> dict:
    from PIL import Image
    from torchvision.io import decode_jpeg

    rng = np.random.default_rng(0)
    base = (rng.random((360, 480, 3)) * 40 + np.linspace(0, 200, 480)[None, :, None]).astype(np.uint8)
    blobs = []
    for i in range(n):
        b = io.BytesIO()
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(b, format="JPEG", quality=92)
        blobs.append(b.getvalue())
    t = time.perf_counter()
    for b in blobs:
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    pil = n / (time.perf_counter() - t)
    datas = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
    dev = "cuda" if device.type == "cuda" else "cpu"
    decode_jpeg(datas[:2], device=dev)
    sync(device)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        decode_jpeg(datas, device=dev)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return {"jpegs": n, "pil_one_thread_img_s": pil, f"decode_jpeg_{dev}_batch_img_s": n / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16,compact")
    ap.add_argument("--size", default="375x500", help="H x W")
    ap.add_argument("--batch", default="16,32")
    ap.add_argument("--variants", default="all", help=f"comma list of {','.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5, help="forward passes per round")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole run")
    ap.add_argument("--decode", type=int, default=0, help="also time JPEG decoding of this many images")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    h, w = (int(v) for v in a.size.lower().split("x"))
    names = VARIANTS if a.variants == "all" else a.variants.split(",")
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {','.join(VARIANTS)}")
    rows = []
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, input {h}x{w}")
    print("| model | batch | variant | network alone (img/s) | warm-up (s) |")
    print("|---|---|---|---|---|", flush=True)

    def show(r: dict) -> None:  # row by row, so a run cut short by its timeout still reports
        rows.append(r)
        if "skipped" in r:
            print(f"| {r['model']} | {r['batch']} | {r['variant']} | skipped: {r['skipped']} | |", flush=True)
        else:
            print(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['img_s']:.1f} | {r['warmup_s']:.1f} |", flush=True)

    for kind in a.model.split(","):
        base = build_model(kind, device)
        for bs in (int(b) for b in a.batch.split(",")):
            fns = {}
            for v in names:
                if time.perf_counter() - t_start > a.budget:
                    show({"model": kind, "batch": bs, "variant": v, "skipped": "budget"})
                    continue
                try:
                    fn, dt, fmt = variant(base, v, device)
                    x = torch.randn(bs, 3, h, w, device=device).to(dt).contiguous(memory_format=fmt)
                    t = time.perf_counter()
                    for _ in range(3):  # cudnn.benchmark's search, compile, graph capture
                        fn(x)
                    sync(device)
                    fns[v] = (fn, x, time.perf_counter() - t)
                except Exception as e:  # one variant failing (e.g. no bf16 on this GPU) must not stop the rest
                    show({"model": kind, "batch": bs, "variant": v, "skipped": f"{type(e).__name__}: {e}"[:200]})
            best = {v: float("inf") for v in fns}
            for _ in range(a.rounds):
                if time.perf_counter() - t_start > a.budget * 1.2:
                    break
                for v, (fn, x, _) in fns.items():
                    sync(device)
                    t = time.perf_counter()
                    for _ in range(a.iters):
                        fn(x)
                    sync(device)
                    best[v] = min(best[v], (time.perf_counter() - t) / a.iters)
            for v, (fn, x, warm) in fns.items():
                show({"model": kind, "batch": bs, "variant": v, "img_s": bs / best[v], "warmup_s": warm})
            del fns
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out = {"device": name, "rows": rows}
    if a.decode:
        d = decode_bench(a.decode, device)
        print("decode: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))
        out["decode"] = d
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
