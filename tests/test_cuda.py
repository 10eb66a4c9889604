"""CUDA paths (predict, AMP, channels_last, training, evaluate) against the CPU reference.

Skipped where no GPU is present (CI); run on a GPU machine with
``pytest tests/test_cuda.py``. The CPU result is the reference: GPU kernels
(TF32 convolutions, fp16 autocast) change the last bits, so labels are
compared by agreement and probabilities with a tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_label.cli import run_cli
from fcn_label.predict import Predictor
from fcn_label.train import Trainer
from fcn_label.checkpoint import load_checkpoint, resolve_weights, save_checkpoint
from support.synth import tiny_config, write_list_dataset
from support.helpers import make_checkpoint, one_at_a_time, rand_image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.png"))


def _shipped():
    return load_checkpoint(resolve_weights("fcn8s-compact-camvid"))


def test_shipped_model_on_cuda_matches_cpu():
    ck = _shipped()
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in EXAMPLES]
    cpu = Predictor(ck, device="cpu").predict_arrays(imgs)
    for amp, channels_last, agree in [(False, False, 0.999), (False, True, 0.999), (True, True, 0.995)]:
        gpu = Predictor(ck, device="cuda", amp=amp, channels_last=channels_last).predict_arrays(imgs, batch_size=3)
        for c, g in zip(cpu, gpu):
            assert g.labels.shape == c.labels.shape
            share = (g.labels == c.labels).mean()
            assert share >= agree, (amp, channels_last, share)
            assert np.abs(g.confidence - c.confidence).mean() < (2e-3 if amp else 5e-4)


@pytest.mark.parametrize("padding,bn", [("caffe", False), ("same", True)])
def test_batched_and_tiled_cuda_equal_the_plain_cpu_loop(padding, bn):
    ck = make_checkpoint(padding, bn)
    sizes = [(37, 53), (37, 53), (64, 48), (1, 1), (120, 300)]
    imgs = [rand_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    pred = Predictor(ck, device="cuda", tile=64)
    torch.backends.cudnn.allow_tf32 = False  # exact-arithmetic comparison
    try:
        preds = pred.predict_arrays(imgs, batch_size=4)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    for img, p in zip(imgs[:4], preds[:4]):
        assert (p.labels == one_at_a_time(ck, img)).mean() >= 0.999
    # tiled (64-px windows) on the GPU == the same tiling on the CPU
    cpu_tiled = Predictor(ck, device="cpu", tile=64).predict_arrays(imgs[4:])[0]
    assert preds[4].labels.shape == (120, 300)
    assert (preds[4].labels == cpu_tiled.labels).mean() >= 0.999


def test_training_on_cuda_with_amp_and_channels_last_learns_and_loads_on_cpu(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    val = write_list_dataset(tmp_path / "d", n=4, seed=1, name="val")
    cfg = tiny_config(data, tmp_path / "run", val=str(val), device="cuda", amp=True, channels_last=True,
                      lr=1e-2, epochs=10, ema=0.0, class_weights="none", warmup_epochs=0, workers=2)
    t = Trainer(cfg, log=lambda m: None)
    t.run()
    losses = [r["loss"] for r in t.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert t.scaler.is_enabled()
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.metadata["metrics"]["val_pixel_accuracy"] > 0.8
    # the GPU-trained weights predict the same on CPU as on GPU
    img = np.asarray(Image.open(val.parent / "val" / "img00.png").convert("RGB"))
    a = Predictor(best, device="cpu").predict_arrays([img])[0].labels
    b = Predictor(best, device="cuda").predict_arrays([img])[0].labels
    assert (a == b).mean() >= 0.999


def _cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in args])
    return e.value.code


def test_predict_and_evaluate_cli_on_cuda_match_cpu(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for p in EXAMPLES:
        (src / p.name).write_bytes(p.read_bytes())
    for dev in ("cpu", "cuda"):
        assert _cli("predict", src, "--out", tmp_path / dev, "--device", dev) == 0
    for p in EXAMPLES:
        a = np.asarray(Image.open(tmp_path / "cpu" / f"{p.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "cuda" / f"{p.stem}.png"))
        assert (a == b).mean() >= 0.999
    # predictions scored against themselves: a perfect report, on either device's output
    assert _cli("evaluate", "--pred", tmp_path / "cuda", "--gt", tmp_path / "cpu", "--num-classes", 11,
                "--out", tmp_path / "rep") == 0
    import pandas as pd

    summary = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("metric")["value"]
    assert summary["pixel_accuracy"] >= 0.999


def test_plain_cuda_names_this_process_device():
    from fcn_label.predict import pick_device

    # torch.cuda.set_device() and DDP refuse an index-less "cuda" (seen on the first GPU run)
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cuda", local_rank=0).index == 0


def test_pinned_staging_copies_every_batch_exactly():
    """The uint8 batch goes through page-locked memory with a non-blocking copy: back-to-back batches of
    changing content must each arrive intact (a buffer reused before its copy ran would mix them)."""
    ck = make_checkpoint()
    cpu, gpu = Predictor(ck, device="cpu"), Predictor(ck, device="cuda")
    for k in range(40):
        imgs = [rand_image(120, 160, 100 * k + i) for i in range(4)]
        x = gpu.preprocess(imgs)
        assert x.is_cuda
        torch.testing.assert_close(x.cpu(), cpu.preprocess(imgs), rtol=0, atol=1e-5)


def test_gpu_jpeg_predicts_what_pillow_decoding_predicts(tmp_path):
    """predict --gpu-jpeg (nvJPEG batches) against Pillow decoding: the same images done and failed, masks
    that agree (nvJPEG's IDCT may change a few pixel values), and the device decoder really used."""
    from fcn_label.predict import pipeline as job_module
    from support.helpers import jpeg_folder

    plain = jpeg_folder(tmp_path / "in")
    ck = make_checkpoint("same", True)
    save_checkpoint(ck, tmp_path / "m.pt")
    decoded = []
    real = job_module.decode_jpegs

    def spy(batch, device):
        out = real(batch, device)
        decoded.extend(t.device.type for t in out)
        return out

    job_module.decode_jpegs = spy
    try:
        for name, extra in (("pillow", []), ("nvjpeg", ["--gpu-jpeg"])):
            code = _cli("predict", tmp_path / "in", "--out", tmp_path / name, "-w", tmp_path / "m.pt",
                        "--device", "cuda", "-q", "--parallel", "workers=0", *extra)
            assert code == 1  # the truncated file and notes.jpg
    finally:
        job_module.decode_jpegs = real
    assert decoded == ["cuda"] * len(plain)
    for d in ("pillow", "nvjpeg"):
        assert len(list((tmp_path / d).glob("*.png"))) == 10
    for p in plain:
        a = np.asarray(Image.open(tmp_path / "pillow" / f"{p.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "nvjpeg" / f"{p.stem}.png"))
        assert (a == b).mean() >= 0.98, p
