"""The served model: its weights on disk, its ``model_version``, and the atomic switch to new weights.

The state folder (``--state``) holds ``models/`` (every weights file served so far, never
deleted: the previous weights are kept) and ``current.json`` (which of them is served, and
the weights the chain started from). ``current.json`` is replaced atomically only after the new
weights are complete on disk, so a process killed at any point restarts on a whole model: the
old one or the new one. In memory the (predictor, version) pair is swapped in one assignment;
a request that started before the swap finishes on the weights it started with and reports
their version.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import load_checkpoint, resolve_weights
from ..images import atomic_path, write_text_atomic

CURRENT = "current.json"
MODELS = "models"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_version(path: Path) -> str:
    """The checkpoint's name and a short hash of its bytes: new weights, new version, even under the same name."""
    stem, h = Path(path).stem, file_hash(path)[:8]
    return stem if stem.endswith(f"-{h}") else f"{stem}-{h}"  # weights the backend named itself


@dataclass(frozen=True)
class Served:
    predictor: object  # fcn_label.predict.Predictor
    version: str
    path: Path
    classes: tuple[str, ...]


class ModelStore:
    """Loads the weights to serve and switches to new ones; ``served`` is read without a lock."""

    def __init__(self, state: str | Path, weights: str | None = None, device: str = "auto",
                 batch_size: int | None = None, log=print):
        self.state = Path(state)
        (self.state / MODELS).mkdir(parents=True, exist_ok=True)
        self.device, self.batch_size, self.log = device, batch_size, log
        self._forward = threading.Lock()  # one forward pass at a time: the model's threads are already busy
        self._switch = threading.Lock()
        base = resolve_weights(weights)
        self.base_version = model_version(base)
        path = base
        cur = self.state / CURRENT
        if cur.is_file():
            try:
                rec = json.loads(cur.read_text(encoding="utf-8"))
                p = self.state / MODELS / rec["file"]
                if rec.get("base") == self.base_version and p.is_file():
                    path = p
                else:
                    log(f"{cur}: serves weights fine-tuned from another model; starting again from {base}")
            except (OSError, ValueError, KeyError, TypeError):
                log(f"{cur}: unreadable; serving {base}")
        self.served = self._load(path)

    def _load(self, path: Path) -> Served:
        from ..predict import Predictor

        ck = load_checkpoint(path)
        return Served(Predictor(ck, device=self.device), model_version(path), Path(path), tuple(ck.classes))

    @property
    def versions(self) -> list[str]:
        """Every weights file kept, oldest first, the starting weights first of all."""
        files = sorted((self.state / MODELS).glob("*.pt"), key=lambda p: p.stat().st_mtime)
        return [self.base_version] + [p.stem for p in files]

    def predict(self, images: Sequence[np.ndarray], served: Served | None = None) -> list:
        """Predictions of ``served`` (default: the model served now); same-size images share batches."""
        served = served or self.served
        with self._forward:
            return served.predictor.predict_arrays(list(images), self.batch_size)

    def install(self, trained: Path, round_no: int) -> Served:
        """Copy ``trained`` into models/ (whole, then renamed), load it, point current.json at it, serve it."""
        with self._switch:
            base_stem = Path(self.base_version).name.rsplit("-", 1)[0]
            tmp_name = f"{base_stem}-ft{round_no}"
            h = file_hash(trained)[:8]
            final = self.state / MODELS / f"{tmp_name}-{h}.pt"
            with atomic_path(final) as tmp:
                shutil.copyfile(trained, tmp)
            new = self._load(final)
            write_text_atomic(self.state / CURRENT, json.dumps({"file": final.name, "version": new.version,
                                                                "base": self.base_version}, indent=1))
            self.served = new
            return new
