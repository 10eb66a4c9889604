"""Which weights there are and what a checkpoint says about itself, without importing torch.

`fcn-label models` and the name resolution of ``--weights`` only need this, so they stay quick:
the shipped models, the checkpoint format tag, and :func:`read_summary`, which reads the
plain-data part of an fcn-label checkpoint (architecture, classes, metrics) straight from the
file's pickle without building a tensor. Loading weights is :mod:`fcn_label.checkpoint`'s.
"""

from __future__ import annotations

import codecs
import collections
import importlib.resources
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import DEFAULT_WEIGHTS
from .errors import WeightsError

FORMAT = "fcn-label/1"  # the "format" entry of every checkpoint fcn-label writes
# Shipped weights are package data, so a wheel (and a pip install from a git URL) carries them;
# the repository's top-level pretrained/ links here for people browsing it.
PRETRAINED_DIR = Path(str(importlib.resources.files("fcn_label") / "pretrained"))


@dataclass(frozen=True)
class WeightsInfo:
    name: str
    file: str  # relative to PRETRAINED_DIR (fcn_label/pretrained/ inside the installed package)
    description: str
    license: str

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.file


# Shipped weights: described here, measured figures read from the file itself.
SHIPPED: dict[str, WeightsInfo] = {
    "fcn8s-compact-camvid": WeightsInfo(
        name="fcn8s-compact-camvid",
        file="fcn8s-compact-camvid.pt",
        description="Compact FCN-8s (VGG16 widths x0.25, BatchNorm) trained on CamVid (from scratch, then "
                    "fine-tuned with a Lovasz-softmax loss), 11 road-scene classes",
        license="CC BY-NC 4.0 (inherited from the CamVid training data): non-commercial use only",
    ),
}


def resolve_weights(name_or_path: str | os.PathLike | None) -> Path:
    """A shipped model's name, a file path or a URL -> an existing file; errors list the choices."""
    if name_or_path is None:
        info = SHIPPED[DEFAULT_WEIGHTS]
        if not info.path.is_file():
            raise WeightsError(
                f"the default model {info.file} is not in {PRETRAINED_DIR}; pass --weights FILE "
                "(an fcn-label checkpoint or a pytorch-fcn .pth)"
            )
        return info.path
    s = str(name_or_path)
    if s in SHIPPED:
        return SHIPPED[s].path
    from .storage import is_url

    if is_url(s):  # a checkpoint on an object store or web server: a local copy for this process
        from .staging import fetch_for_process

        return fetch_for_process(s, "weights")
    p = Path(s)
    if p.exists():
        return p
    raise WeightsError(
        f"{s}: no such weights file or shipped model; shipped models: {', '.join(SHIPPED)}; "
        "or give the path of an fcn-label checkpoint / pytorch-fcn .pth"
    )


@dataclass(frozen=True)
class Summary:
    """What an fcn-label checkpoint says about itself (no weights)."""

    arch: str
    num_classes: int
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


def _placeholder(*args, **kwargs) -> None:
    """Stands in for every tensor, storage and dtype: the summary needs none of them."""
    return None


class _PlainData(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numbers; torch's rebuild helpers become placeholders and
    any other global is refused, so nothing from the file runs."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 pickles bytes
            return codecs.encode
        if module == "torch" or module.startswith("torch."):
            return _placeholder
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

    def persistent_load(self, pid):  # a tensor's storage, kept in another entry of the zip
        return None


def read_summary(path: str | os.PathLike) -> Summary | None:
    """The summary of an fcn-label checkpoint, or None when ``path`` is not one that can be read this
    way (a pytorch-fcn state dict, a legacy non-zip file, a damaged file): then
    :func:`fcn_label.checkpoint.load_checkpoint` reads it, or says in one line what is wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            obj = _PlainData(io.BytesIO(z.read(pkl))).load()
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            return None
        config = obj["config"]
        return Summary(arch=str(config["arch"]), num_classes=int(config["num_classes"]),
                       classes=[str(c) for c in obj["classes"]], metadata=dict(obj.get("metadata") or {}))
    except Exception:  # any damage: the caller falls back to the full load, which names the problem
        return None
