"""`--backend` on predict and evaluate: opt-in, calibrated where it says, one line when an extra is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_label.checkpoint import save_checkpoint
from fcn_label.cli import run_cli
from fcn_label.predict.backends import calibration_sample, list_calibration_images
from support.helpers import make_checkpoint, rand_image


@pytest.fixture
def same_model(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(padding="same", bn=True), path)
    return path


def _images(folder: Path, n: int, size=(40, 56)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        Image.fromarray(rand_image(*size, seed=i)).save(p)
        paths.append(p)
    return paths


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        run_cli([str(a) for a in args])
    return e.value.code, capsys.readouterr()


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}


def test_calibration_sample_spreads_evenly():
    assert calibration_sample(list(range(10)), 4) == [0, 2, 5, 7]
    assert calibration_sample(list(range(3)), 32) == [0, 1, 2]


def test_calib_list_reads_image_mask_lines_and_plain_lines(tmp_path):
    _images(tmp_path / "img", 2)
    (tmp_path / "pairs.txt").write_text("img/im0.png lbl/im0.png\n\nimg/im1.png lbl/im1.png\n")
    assert list_calibration_images(tmp_path / "pairs.txt") == [tmp_path / "img/im0.png", tmp_path / "img/im1.png"]
    (tmp_path / "plain.txt").write_text(f"{tmp_path / 'img/im1.png'}\n")
    assert list_calibration_images(tmp_path / "plain.txt") == [tmp_path / "img/im1.png"]
    assert list_calibration_images(tmp_path / "img") == [tmp_path / "img/im0.png", tmp_path / "img/im1.png"]


def test_default_backend_is_the_exact_path_and_bf16_is_opt_in(tmp_path, same_model, capsys):
    _images(tmp_path / "in", 3)
    code, _ = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "fp32", "-w", same_model, "-q", "--parallel", "workers=0")
    assert code == 0
    code, out = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "bf16", "-w", same_model, "-q",
                    "--parallel", "workers=0", "--backend", "bf16")
    assert code == 0 and "backend bf16" in out.err
    a, b = _masks(tmp_path / "fp32"), _masks(tmp_path / "bf16")
    assert a.keys() == b.keys() and len(a) == 3
    agree = np.mean([np.mean(a[k] == b[k]) for k in a])
    assert agree >= 0.9  # bf16 is close, not exact, on a random tiny model


def test_missing_extra_is_one_line_naming_the_extra(tmp_path, same_model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    _images(tmp_path / "in", 1)
    code, out = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "out", "-w", same_model, "-q",
                    "--backend", "ort-int8")
    assert code == 2 and "Traceback" not in out.err
    errors = [line for line in out.err.strip().splitlines() if not line.startswith("calibrating ort-int8")]
    assert errors == ['error: backend "ort-int8" needs ONNX Runtime: pip install "fcn-label[onnx]" '
                      "(or choose --backend eager)"]


@pytest.mark.parametrize("verb", ["predict", "evaluate"])
@pytest.mark.parametrize("kind", ["fp8", "compile", "int8", "ort"])  # the last three were removed in 0.2.0
def test_unknown_or_removed_backend_lists_the_choices(tmp_path, same_model, capsys, verb, kind):
    args = [tmp_path, "-o", tmp_path / "out"] if verb == "predict" else ["--gt", tmp_path]
    code, out = cli(capsys, verb, *args, "-w", same_model, "--backend", kind)
    assert code == 2 and "Traceback" not in out.err
    line = out.err.replace("\n", "")  # one message, wrapped by the console
    assert line.startswith("error: Invalid value for '--backend'")
    assert line.endswith(f"'{kind}' is not one of 'eager', 'bf16', 'ort-int8'.")


def test_evaluate_never_calibrates_on_the_scored_images(tmp_path, same_model, capsys):
    code, out = cli(capsys, "evaluate", "--weights", same_model, "--backend", "ort-int8", "--gt", tmp_path)
    assert code == 2 and "--calib" in out.err and "Traceback" not in out.err


@pytest.mark.slow
def test_ort_int8_predict_calibrates_on_the_job_and_writes_only_under_out(tmp_path, same_model, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    tmp = tmp_path / "systemp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    _images(tmp_path / "in", 5)
    code, _ = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "fp32", "-w", same_model, "-q", "--parallel", "workers=0")
    code, out = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "q", "-w", same_model, "-q", "--parallel", "workers=0",
                    "--backend", "ort-int8", "--calib-count", "3")
    assert code == 0, out.err
    assert "calibrating ort-int8 on 3 images of this job" in out.err
    a, b = _masks(tmp_path / "fp32"), _masks(tmp_path / "q")
    assert a.keys() == b.keys() and np.mean([np.mean(a[k] == b[k]) for k in a]) >= 0.9
    assert list(tmp.iterdir()) == []  # the export / quantization temp files stayed inside --out
    assert not list((tmp_path / "q" / ".fcn-label").glob("fcn-label-backend-*"))  # and were removed
    # --calib: another folder, named in the output
    _images(tmp_path / "calib", 2, size=(48, 64))
    code, out = cli(capsys, "predict", tmp_path / "in", "-o", tmp_path / "q2", "-w", same_model, "-q",
                    "--parallel", "workers=0", "--backend", "ort-int8", "--calib", tmp_path / "calib")
    assert code == 0 and f"on 2 images from --calib {tmp_path / 'calib'}" in out.err.replace("\n", "")
