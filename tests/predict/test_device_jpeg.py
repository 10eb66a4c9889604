"""JPEGs decoded in batches by torchvision (predict --gpu-jpeg; here on the CPU, where torchvision's
libjpeg-turbo gives Pillow's pixels exactly), against the Pillow-decoded job as the reference."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_label.checkpoint import CAFFE_BGR, IMAGENET, save_checkpoint
from fcn_label.errors import InputError
from fcn_label.images import plain_jpeg, read_image
from fcn_label.predict import PredictJob, PredictOptions, Predictor, discover
from fcn_label.predict import pipeline as job_module
from support.helpers import jpeg_folder as mixed_folder, make_checkpoint, one_at_a_time, rand_image


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint("same", True), path)
    return path


def run(model_file, folder, out, **kw):
    from fcn_label.checkpoint import load_checkpoint

    items, problems = discover([str(folder)], out)
    opts = PredictOptions(out=out, procs=1, overlay=True, probs=True, **kw)
    return PredictJob(Predictor(load_checkpoint(model_file), device="cpu"), opts).run(items, problems)


def outputs(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".fcn-label" not in p.parts and p.suffix in (".png", ".jpg")}


def records(root):
    recs = [json.loads(line) for s in (root / ".fcn-label" / "records").glob("*.jsonl")
            for line in s.read_bytes().splitlines()]
    for r in recs:
        r.pop("seconds")
    return sorted(recs, key=lambda r: r["file_name"])


@pytest.mark.parametrize("workers", [0, 2])
def test_jpegs_decoded_in_batches_write_what_pillow_decoding_writes(tmp_path, model_file, monkeypatch, workers):
    plain = mixed_folder(tmp_path / "in")
    ref = run(model_file, tmp_path / "in", tmp_path / "pillow", workers=workers)
    batches = []
    real = job_module.decode_jpegs

    def spy(batch, device):
        batches.append(sorted((b.height, b.width) for b in batch))
        return real(batch, device)

    monkeypatch.setattr(job_module, "decode_jpegs", spy)
    res = run(model_file, tmp_path / "in", tmp_path / "device", workers=workers, jpeg_device="cpu", batch_size=3)
    # exactly the plain JPEGs went to the batch decoder, several at a time
    assert sorted(s for b in batches for s in b) == sorted(Image.open(p).size[::-1] for p in plain)
    assert max(len(b) for b in batches) == 3
    # the same images done and failed, with the same messages, and every output byte-identical
    assert (res.done, ref.done) == (10, 10)
    assert sorted(res.failed) == sorted(ref.failed) and len(res.failed) == 2
    assert any("truncated" in msg for _, _, msg in res.failed)
    a, b = outputs(tmp_path / "pillow"), outputs(tmp_path / "device")
    assert a.keys() == b.keys() and len(a) == 30  # mask, overlay, confidence per image
    assert all(a[k] == b[k] for k in a)
    assert records(tmp_path / "pillow") == records(tmp_path / "device")
    # and the masks are the plain reference's
    from fcn_label.checkpoint import load_checkpoint
    ck = load_checkpoint(model_file)
    for p in plain:
        want = one_at_a_time(ck, np.asarray(Image.open(p).convert("RGB")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "device" / f"{p.stem}.png")), want), p


def test_a_batch_the_decoder_refuses_is_decoded_by_pillow_file_by_file(tmp_path, model_file, monkeypatch):
    mixed_folder(tmp_path / "in")
    run(model_file, tmp_path / "in", tmp_path / "pillow")
    calls = []

    def refuse(batch, device):
        calls.append(len(batch))
        raise RuntimeError("nvjpegDecodeBatched failed: 7")

    monkeypatch.setattr(job_module, "decode_jpegs", refuse)
    res = run(model_file, tmp_path / "in", tmp_path / "device", jpeg_device="cpu")
    assert sum(calls) == 7 and res.done == 10 and len(res.failed) == 2
    a, b = outputs(tmp_path / "pillow"), outputs(tmp_path / "device")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_plain_jpeg_takes_only_files_a_bare_decoder_reads_like_pillow(tmp_path):
    plain = mixed_folder(tmp_path / "in")
    for p in plain:
        data, w, h = plain_jpeg(p)
        assert data == p.read_bytes() and (w, h) == Image.open(p).size
    for name in ("cmyk.jpg", "rot.jpg", "truncated.jpg", "strip.png"):
        assert plain_jpeg(tmp_path / "in" / name) is None, name
    with pytest.raises(InputError, match="notes.jpg: not a recognised image format"):
        plain_jpeg(tmp_path / "in" / "notes.jpg")
    # cut inside its header: refused at once, with read_image's message
    cut = tmp_path / "in" / "cut.jpg"
    cut.write_bytes(plain[0].read_bytes()[:200])
    with pytest.raises(InputError) as e:
        plain_jpeg(cut)
    with pytest.raises(InputError) as ref:
        read_image(cut)
    assert str(e.value) == str(ref.value) and str(e.value).startswith(str(cut))
    with pytest.raises(InputError, match="exceeds the limit"):
        plain_jpeg(plain[0], max_pixels=100)


@pytest.mark.parametrize("norm", [IMAGENET, CAFFE_BGR], ids=["imagenet", "caffe_bgr"])
def test_device_decoded_tensors_normalise_to_the_same_floats_as_arrays(norm):
    ck = make_checkpoint()
    ck.normalization = norm
    pred = Predictor(ck, device="cpu")
    imgs = [rand_image(37, 53, i) for i in range(3)]
    from_arrays = pred.preprocess(imgs)
    # decode_jpegs hands over (H, W, 3) views of (3, H, W) tensors
    from_tensors = pred.preprocess([torch.from_numpy(a.transpose(2, 0, 1).copy()).permute(1, 2, 0) for a in imgs])
    assert from_tensors.dtype == torch.float32 and torch.equal(from_arrays, from_tensors)


def test_cli_gpu_jpeg_without_a_gpu_is_one_line(tmp_path, model_file, capsys):
    from fcn_label.cli import run_cli

    mixed_folder(tmp_path / "in")
    with pytest.raises(SystemExit) as e:
        run_cli(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights", str(model_file),
                 "--device", "cpu", "--gpu-jpeg"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--gpu-jpeg decodes JPEGs on a CUDA GPU; this run is on cpu" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
