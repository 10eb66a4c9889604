"""Weights files: our self-describing checkpoints, pytorch-fcn and torchvision state dicts.

Our checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading never runs pickled code. It holds
everything predict needs (architecture, classes, palette, normalisation) plus
training metadata; a training checkpoint also carries ``train_state`` for
``--resume``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the torch-free part (shipped models, --weights names, the format tag) lives in catalog.py
from .catalog import FORMAT, PRETRAINED_DIR, SHIPPED, WeightsInfo, resolve_weights  # noqa: F401
from .choices import DEFAULT_WEIGHTS  # noqa: F401  (torch-free home, for --help)
from .classes import VOC_CLASSES, voc_palette
from .errors import WeightsError
from .images import atomic_path
from .model import ARCHS, FCN, FCNConfig


@dataclass(frozen=True)
class Normalization:
    """How pixels reach the network: RGB/BGR order, value scale, mean and std per channel.

    torchvision ImageNet: RGB, [0, 1], mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    pytorch-fcn / Caffe: BGR, [0, 255], mean (104.00699, 116.66877, 122.67892), std 1.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0
    bgr: bool = False

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale, "bgr": self.bgr}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["scale"]), bool(d["bgr"]))

    def apply(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 RGB -> normalised float."""
        x = rgb_uint8.float() * self.scale
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


IMAGENET = Normalization()
CAFFE_BGR = Normalization(mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0), scale=1.0, bgr=True)


@dataclass
class Checkpoint:
    """A model plus everything needed to use it on new images."""

    config: FCNConfig
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    normalization: Normalization = IMAGENET
    ignore_index: int = 255
    metadata: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None

    def build(self, device: str | torch.device = "cpu") -> FCN:
        model = FCN.empty(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights do not fit {self.config.arch} (width {self.config.width}): {_first_line(e)}") from None
        return model.to(device).eval()

    def to_dict(self, with_train_state: bool = True) -> dict:
        d = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "state_dict": self.state_dict,
            "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette],
            "normalization": self.normalization.to_dict(),
            "ignore_index": int(self.ignore_index),
            "metadata": self.metadata,
        }
        if with_train_state and self.train_state is not None:
            d["train_state"] = self.train_state
        return d


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return " ".join(x.strip() for x in s[:3])[:400]


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike, with_train_state: bool = True, half: bool = False) -> None:
    """Atomic save: the file under ``path`` is always a complete checkpoint."""
    d = ckpt.to_dict(with_train_state)
    if half:
        d["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in d["state_dict"].items()}
    with atomic_path(path) as tmp:
        torch.save(d, tmp)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found; check the path or run `fcn-label models`") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory; give the weights file inside it") from None
    except PermissionError:
        raise WeightsError(f"{path}: permission denied; make the file readable") from None
    except pickle.UnpicklingError as e:
        # torch's message mentions weights_only for any failure (a JPEG too), so look at what the
        # pickle would import, without running it: anything beyond torch's own rebuild helpers is code
        foreign = [g for g in _pickle_imports(path) if g.split(".")[0] not in ("torch", "collections", "_codecs")]
        if foreign or "GLOBAL" in str(e):
            what = f" ({foreign[0]})" if foreign else ""
            raise WeightsError(
                f"{path}: refused: the file contains pickled code or objects{what}, which fcn-label never runs; "
                "re-save it as a plain state dict (torch.save(model.state_dict(), ...))"
            ) from None
        raise WeightsError(f"{path}: not a PyTorch weights file or truncated ({_first_line(e)}); re-download or re-save it") from None
    except Exception as e:  # a damaged file can fail anywhere inside the unpickler
        raise WeightsError(f"{path}: not a PyTorch weights file or truncated ({_first_line(e)}); re-download or re-save it") from None


def _pickle_imports(path: Path) -> list[str]:
    """'module.name' of every global the file's pickle would import, read with pickletools (nothing runs)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                stream = io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
        else:
            stream = io.BytesIO(path.read_bytes()[:64 << 20])  # legacy format: several pickles in a row
        found, strings = [], []
        for _ in range(5):
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif isinstance(arg, str):
                    strings.append(arg)
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        return found
    except Exception:  # not a pickle, or it ends early: report what was seen so far
        return found if "found" in locals() else []


def _infer_pytorch_fcn(sd: dict) -> tuple[str, int]:
    if "score_fr.weight" not in sd:
        raise WeightsError("state dict has no score_fr layer: not an FCN (for a VGG16 backbone use --init-backbone)")
    n = sd["score_fr.weight"].shape[0]
    arch = "fcn8s" if "score_pool3.weight" in sd else "fcn16s" if "score_pool4.weight" in sd else "fcn32s"
    return arch, n


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None,
                    classes: list[str] | None = None) -> Checkpoint:
    """Load our checkpoint, or a bare pytorch-fcn FCN state dict (VOC classes and Caffe BGR input by default).

    ``arch`` and ``num_classes``, when given, are checked against the file and a
    mismatch names both sides.
    """
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a checkpoint or state dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        try:
            cfg = FCNConfig.from_dict(obj["config"])
            ck = Checkpoint(
                config=cfg,
                state_dict=obj["state_dict"],
                classes=list(obj["classes"]),
                palette=[tuple(c) for c in obj["palette"]],
                normalization=Normalization.from_dict(obj["normalization"]),
                ignore_index=int(obj.get("ignore_index", 255)),
                metadata=dict(obj.get("metadata", {})),
                train_state=obj.get("train_state"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: damaged fcn-label checkpoint ({e}); re-save it") from None
        ck.state_dict = {k: v.float() if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    else:
        sd = obj.get("model_state_dict", obj.get("state_dict", obj))  # pytorch-fcn's trainer saves model_state_dict
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: not a state dict of tensors; expected an fcn-label checkpoint or pytorch-fcn .pth")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        try:
            file_arch, n = _infer_pytorch_fcn(sd)
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}") from None
        fc6 = sd.get("fc6.weight")
        width = sd["conv5_3.weight"].shape[0] / 512 if "conv5_3.weight" in sd else 1.0
        cfg = FCNConfig(arch=file_arch, num_classes=n, width=width,
                        fc_channels=fc6.shape[0] if fc6 is not None else 4096)
        names = list(classes) if classes else (list(VOC_CLASSES) if n == 21 else [f"class_{i}" for i in range(n)])
        ck = Checkpoint(cfg, sd, names, voc_palette(max(n, 1))[:n] if n <= 256 else voc_palette(), CAFFE_BGR,
                        metadata={"source": f"pytorch-fcn state dict {path.name}"})
    if arch is not None and arch != ck.config.arch:
        raise WeightsError(f"{path}: holds an {ck.config.arch} but --arch {arch} was asked for; drop --arch or use a matching file")
    if num_classes is not None and num_classes != ck.config.num_classes:
        raise WeightsError(
            f"{path}: has {ck.config.num_classes} classes but {num_classes} were asked for; "
            "fine-tune with `fcn-label finetune` to change the class count"
        )
    if classes is not None and len(classes) != ck.config.num_classes:
        raise WeightsError(f"{path}: has {ck.config.num_classes} classes but {len(classes)} class names were given")
    if len(ck.classes) != ck.config.num_classes:
        raise WeightsError(f"{path}: lists {len(ck.classes)} class names for {ck.config.num_classes} classes")
    try:  # names and shapes checked now, on the meta device: no memory, no init cost
        with torch.device("meta"):
            FCN(ck.config).load_state_dict(ck.state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit {ck.config.arch} (width {ck.config.width}): {_first_line(e)}") from None
    return ck


def vgg16_backbone_state(path: str | os.PathLike, config: FCNConfig) -> dict[str, torch.Tensor]:
    """Map a torchvision VGG16 ImageNet state dict (``vgg16-397923af.pth``) onto FCN names.

    features.{0,2,5,...} become conv1_1 ... conv5_3; classifier.0 (25088 -> 4096)
    is reshaped into the 7x7 fc6 convolution and classifier.3 into the 1x1 fc7,
    as the paper converts VGG16's fully connected layers.
    """
    path = Path(path)
    sd = _torch_load(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "features.0.weight" not in sd:
        raise WeightsError(f"{path}: not a torchvision VGG16 state dict (no features.0.weight)")
    if config.batch_norm:
        raise WeightsError("VGG16 ImageNet weights have no BatchNorm; use a model without --batch-norm")
    names = [f"conv{b}_{i}" for b, (n, _) in enumerate(((2, 0), (2, 0), (3, 0), (3, 0), (3, 0)), 1) for i in range(1, n + 1)]
    conv_idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(".weight")})
    if len(conv_idx) != 13:
        raise WeightsError(f"{path}: expected 13 VGG16 convolutions, found {len(conv_idx)} (is it VGG16 without BN?)")
    out = {}
    for name, i in zip(names, conv_idx):
        out[f"{name}.weight"] = sd[f"features.{i}.weight"]
        out[f"{name}.bias"] = sd[f"features.{i}.bias"]
    fc6, fc7 = sd["classifier.0.weight"], sd["classifier.3.weight"]
    # torchvision flattens pool5 (C, 7, 7) channel-major, which is exactly a 7x7 conv's weight layout
    out["fc6.weight"] = fc6.reshape(fc6.shape[0], -1, 7, 7)
    out["fc6.bias"] = sd["classifier.0.bias"]
    out["fc7.weight"] = fc7.reshape(fc7.shape[0], fc7.shape[1], 1, 1)
    out["fc7.bias"] = sd["classifier.3.bias"]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        expected = {k: v.shape for k, v in FCN(config).state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k])}" for k, v in out.items() if expected.get(k) != v.shape]
    if wrong:
        raise WeightsError(f"{path}: VGG16 weights do not fit this model ({'; '.join(wrong[:3])}); "
                           "use --width 1 --fc-channels 4096 for ImageNet VGG16")
    return out
