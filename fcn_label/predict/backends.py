"""Faster CPU forward passes for a loaded FCN: the same (N, C, H, W) logits, other numerics.

``make_backend(model, kind, calib_images)`` returns a callable with the FCN forward's
contract (normalised float (N, 3, H, W) in, class scores (N, C, H, W) at the same H x W
out), so a :class:`~fcn_label.predict.Predictor` can use it in place of its model.

Kinds (figures: benchmarks/cpu_backends.py; used by ``Predictor(backend=...)``); only the
kinds that the measured tables in the docs show to earn their place are offered:

* ``eager``: BatchNorm folded, channels_last, plain PyTorch (oneDNN). Exact up to float
  rounding; predict's path.
* ``bf16``: ``eager`` with bfloat16 weights and activations (fast only where the CPU has
  AVX512-BF16 / AMX); not exact.
* ``ort-int8``: ONNX Runtime with static QDQ int8 (per-channel weights, uint8
  activations), calibrated on ``calib_images``; not exact. Needs ``onnxruntime``, ``onnx``
  and ``onnxscript`` (the exporter); no C++ compiler.

Shapes: ``ort-int8`` sees inputs zero-padded at the bottom/right to a multiple of 32 (what the
FCN's "same" padding does itself) and its scores cropped back, and is exported with symbolic
height, width and batch: any image size runs without re-exporting or recalibrating.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import FCN

from ..choices import BACKENDS as KINDS  # noqa: E402
from ..choices import CALIBRATED  # noqa: E402,F401  (kinds that measure activation ranges on sample images)
DEFAULT_CALIB_COUNT = 32
MULTIPLE = 32  # the FCN's total stride: "same"-padded inputs are padded to this anyway

Backend = Callable[[torch.Tensor], torch.Tensor]


class BackendError(ConfigError):
    """A backend that cannot be built here; the message says what to install or choose instead."""


def make_backend(model: FCN, kind: str = "eager", calib_images: Iterable[torch.Tensor] = (),
                 workdir: str | os.PathLike | None = None) -> Backend:
    """A callable ``x -> logits`` for ``model`` (left untouched: a folded copy is used).

    ``calib_images`` are normalised float tensors (1, 3, H, W) or (3, H, W) as the model
    sees them, only used by the :data:`CALIBRATED` kinds (32 training images are plenty;
    never the images the accuracy is measured on). ``workdir``: where the build's temporary
    files (ONNX export and quantization) go, e.g. inside the job's --out, so that nothing is
    written elsewhere; the system temp folder when None.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(KINDS)}")
    m = _folded_copy(model)
    if kind == "eager":
        return _no_grad(m)
    if kind == "bf16":
        # weights stored in bfloat16 rather than autocast, which would re-cast every weight on every call
        m = m.to(torch.bfloat16)

        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return m(x.to(torch.bfloat16)).float()
        return bf16
    if m.config.padding != "same":
        raise BackendError(f"backend {kind!r} needs a padding='same' model (this one is {m.config.padding!r}); "
                           "use --backend eager")
    return _Padded(_ort_int8(m, list(calib_images), torch.get_num_threads(), workdir))


def _folded_copy(model: FCN) -> FCN:
    m = FCN.empty(model.config)
    m.load_state_dict(model.state_dict())
    return m.to("cpu").eval().fold_batch_norm().to(memory_format=torch.channels_last)


def _no_grad(m: FCN) -> Backend:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return m(x)
    return run


def _pad(x: torch.Tensor) -> torch.Tensor:
    ph, pw = (-x.shape[-2]) % MULTIPLE, (-x.shape[-1]) % MULTIPLE
    x = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
    return x.contiguous(memory_format=torch.channels_last)


class _Padded:
    """Pads to a multiple of 32 outside the captured graph and crops the scores back.

    Equivalent to the FCN's own padding (bottom/right zeros, crop at the top left), but
    keeps the data-dependent padding amount out of the graph, so one capture serves every size.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        with torch.no_grad():
            y = self.fn(_pad(x))
        return y[:, :, :H, :W].contiguous()


@contextlib.contextmanager
def _temp_folder(workdir: str | os.PathLike | None) -> Iterator[str]:
    """A temporary folder inside ``workdir`` that is also every library's temp folder meanwhile
    (onnxruntime's quantizer makes its own), removed afterwards."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fcn-label-backend-", dir=workdir) as tmp:
        saved = tempfile.tempdir
        tempfile.tempdir = tmp if workdir is not None else saved
        try:
            yield tmp
        finally:
            tempfile.tempdir = saved


def calibration_sample(paths: Sequence, count: int = DEFAULT_CALIB_COUNT) -> list:
    """``count`` entries spread evenly over ``paths`` (all when fewer): deterministic, and not one
    sequence's first frames."""
    paths = list(paths)
    if count <= 0 or len(paths) <= count:
        return paths
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def list_calibration_images(source: str | os.PathLike) -> list[Path]:
    """The images named by --calib: a folder (searched recursively) or a list file, one image per
    line or ``image mask`` lines (e.g. CamVid train.txt), relative paths against the list's folder."""
    from ..images import IMAGE_EXTENSIONS

    src = Path(source)
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not src.is_file():
        raise ConfigError(f"--calib {src}: not found; give a folder of images or a list file (e.g. train.txt)")
    out = []
    for line in src.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        if not (p if p.is_absolute() else src.parent / p).exists():
            p = Path(line.split()[0])  # 'image mask' lines
        out.append(p if p.is_absolute() else src.parent / p)
    if not out:
        raise ConfigError(f"--calib {src}: lists no images; give a folder of images or a list file with one per line")
    return out


def load_calibration(paths: Sequence, count: int = DEFAULT_CALIB_COUNT, max_pixels: int = 2_000_000):
    """RGB arrays of up to ``count`` images spread over ``paths`` and the one-line reasons others were
    left out (unreadable, or larger than ``max_pixels``: those are tiled, and would cost seconds each)."""
    from ..guard import guarded
    from ..images import image_size, read_image

    from .predictor import image_source

    arrays, skipped = [], []
    for path in calibration_sample(paths, count):
        p, err = guarded(path, image_source, path)  # a remote input: its bytes, fetched once
        if err is not None:
            skipped.append(err)
            continue
        size, err = guarded(p, image_size, p)
        if err is None and size[0] * size[1] > max_pixels:
            err = f"{p}: {size[0]}x{size[1]} is above {max_pixels:,} pixels; left out of calibration"
        a = None
        if err is None:
            a, err = guarded(p, read_image, p)
        if err is not None:
            skipped.append(err)
        else:
            arrays.append(a)
    return arrays, skipped


def _ort_int8(m: FCN, calib: list[torch.Tensor], threads: int,
              workdir: str | os.PathLike | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError('backend "ort-int8" needs ONNX Runtime: pip install "fcn-label[onnx]" '
                           "(or choose --backend eager)") from None
    if not calib:
        raise ValueError("backend 'ort-int8' needs calibration images (about 32 training images)")
    example = _pad(calib[0])
    example = (example if example.dim() == 4 else example.unsqueeze(0)).expand(2, -1, -1, -1).contiguous()
    with _temp_folder(workdir) as tmp:
        path = Path(tmp) / "fcn.onnx"
        h, w = torch.export.Dim("h32", min=2, max=1024), torch.export.Dim("w32", min=2, max=1024)
        n = torch.export.Dim("n", min=1, max=256)
        m = m.to(memory_format=torch.contiguous_format)
        torch.onnx.export(m, (example,), str(path), input_names=["x"], output_names=["scores"], dynamo=True,
                          dynamic_shapes={"x": {0: n, 2: MULTIPLE * h, 3: MULTIPLE * w}}, external_data=False,
                          verbose=False)
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib)

            def get_next(self):
                c = next(self.it, None)
                if c is None:
                    return None
                return {"x": _pad(c if c.dim() == 4 else c.unsqueeze(0)).contiguous().numpy()}

        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        path = q
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path.read_bytes(), so, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"x": x.float().contiguous().numpy()})[0])
    return run
