"""Training and fine-tuning loop: resumable, validated as it goes, DDP-ready.

Launch under ``torchrun`` and it runs DistributedDataParallel (gloo on CPU,
NCCL on CUDA); rank 0 logs and writes checkpoints, metrics are reduced across
ranks. Every checkpoint is written atomically and carries the optimiser, EMA,
schedule position (the schedule is a pure function of the step) and the
position inside the current epoch, so ``--resume`` continues where a killed
run stopped, mid-epoch included.

Exact resume rests on three rules: the sample order is a pure function of
(seed, epoch), augmentation of (seed, epoch, index), and the global torch RNG
(dropout) is re-seeded from (seed, rank, step) before every optimiser step. No
random state therefore depends on how many times the process was restarted.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import (
    Augment, SegmentationDataset, detect_layout, find_class_file, load_pairs, mask_palette,
    median_frequency_weights, read_class_file,
)
from .io import InputError, atomic_path, remove_stale_temp, why
from .metrics import confusion_matrix, scores
from .model import ARCHS, FCN, FCNConfig
from .predict import pick_device
from .weights import (
    CAMVID_CLASSES, CAMVID_PALETTE, IMAGENET, VOC_CLASSES, Checkpoint, Normalization, WeightsError, load_checkpoint,
    resolve_weights, save_checkpoint, vgg16_backbone_state, voc_palette,
)

PRESETS = {
    # The paper's recipe (sec. 4.3): full VGG16 with Caffe padding, SGD momentum 0.9,
    # weight decay 5e-4 (none on biases), fixed lr 1e-4 for VGG16 with 2x lr for
    # biases, score layers zero-initialised, the final upsampling fixed bilinear
    # (intermediate ones bilinear-initialised and learned), no class balancing.
    "paper": dict(optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, schedule="constant", bias_lr_mult=2.0,
                  freeze_upsampling=True, class_weights="none", ema=0.0, warmup_epochs=0,
                  width=1.0, fc_channels=4096, batch_norm=False, padding="caffe", dropout=0.5),
    # What trains a compact BN model from scratch in a few CPU hours: AdamW, poly decay
    # with warm-up, softened median-frequency class weights, weight averaging (EMA).
    "modern": dict(optimizer="adamw", lr=2e-3, momentum=0.9, weight_decay=1e-4, schedule="poly", bias_lr_mult=1.0,
                   freeze_upsampling=False, class_weights="sqrt-median", ema=0.998, warmup_epochs=2,
                   width=0.25, fc_channels=512, batch_norm=True, padding="same", dropout=0.1),
}
# The paper's unnormalised loss (summed over pixels) is ~pixels-per-batch times larger,
# so the recipe pairs it with high momentum and a tiny lr (pytorch-fcn, FCN-32s).
PAPER_SUM_LOSS = dict(momentum=0.99, lr=1e-10)
# ImageNet VGG16 weights fit only the full-width, BN-free net.
VGG16_MODEL = dict(width=1.0, fc_channels=4096, batch_norm=False)

CHOICES = {
    "preset": tuple(PRESETS),
    "arch": ARCHS,
    "padding": ("same", "caffe"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("constant", "poly", "cosine"),
    "class_weights": ("none", "median", "sqrt-median"),
    "loss": ("mean", "sum"),
}
# Options that may change between a run and its --resume without a warning.
RESUME_FREE = {"out", "workers", "threads", "device", "cache", "max_steps", "val_every", "val_every_steps",
               "checkpoint_every_steps", "epochs", "save_every"}


@dataclass
class TrainConfig:
    """Every option of a run, saved in config.json and in each checkpoint's metadata.

    A field's meaning is part of the checkpoint contract (``--resume`` compares
    the saved values with the new ones), so fields are only ever added.
    """

    data: str
    val: str | None = None
    out: str = "runs/fcn8s"
    images: str | None = None  # image root for COCO JSON
    split: str | None = None  # VOC split
    val_split: str | None = None
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    num_classes: int | None = None
    ignore_index: int = 255
    arch: str | None = None  # None: fcn8s, or the --init checkpoint's arch; a finer arch than --init's = staged training
    width: float = 0.25
    fc_channels: int = 512
    batch_norm: bool = True
    padding: str = "same"
    dropout: float = 0.1
    init: str | None = None  # our checkpoint or pytorch-fcn .pth
    init_backbone: str | None = None  # torchvision vgg16 .pth
    preset: str = "modern"
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    bias_lr_mult: float = 1.0
    freeze_upsampling: bool = False  # keep the final upsampling fixed bilinear (paper)
    class_weights: str = "sqrt-median"
    ema: float = 0.998
    warmup_epochs: int = 2
    epochs: int = 50
    batch_size: int = 8
    accumulate: int = 1
    crop: tuple[int, int] = (288, 384)
    scale: tuple[float, float] = (0.5, 2.0)
    val_every: int = 1
    checkpoint_every_steps: int = 0
    workers: int = 0
    seed: int = 0
    deterministic: bool = False
    amp: bool = False
    channels_last: bool = False
    device: str = "auto"
    cache: bool = True
    max_steps: int = 0  # stop early after this many optimiser steps (tests, smoke runs)
    threads: int = 0
    loss: str = "mean"  # "mean" per valid pixel, or the paper's unnormalised "sum"
    val_every_steps: int = 0
    save_every: int = 1  # epochs between last.pt writes (also after each validation and at the end)
    skip_bad: bool = False  # leave out unusable pairs (each listed) instead of stopping before training

    def apply_preset(self, explicit: set[str]) -> None:
        """Fill preset values for every option the user did not set explicitly.

        The paper preset with ``loss="sum"`` takes momentum 0.99 and lr 1e-10, and
        ``init_backbone`` implies the full VGG16 shape, since ImageNet weights fit nothing else.
        """
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[self.preset])
        if self.preset == "paper" and self.loss == "sum":
            values |= PAPER_SUM_LOSS
        if self.init_backbone:
            values |= VGG16_MODEL
        for k, v in values.items():
            if k not in explicit:
                setattr(self, k, v)

    def validate(self) -> None:
        """Reject impossible option values before any data is read; messages list the valid choices."""
        for k, allowed in CHOICES.items():
            v = getattr(self, k)
            if v is not None and v not in allowed:
                raise ValueError(f"unknown {k.replace('_', '-')} {v!r}; choose one of {', '.join(allowed)}")
        for k in ("epochs", "batch_size", "accumulate", "val_every", "save_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}")
        for k in ("checkpoint_every_steps", "val_every_steps", "max_steps", "workers", "threads", "warmup_epochs"):
            if getattr(self, k) < 0:
                raise ValueError(f"--{k.replace('_', '-')} must be 0 or more, got {getattr(self, k)}")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"--ignore-index must be 0..255 (masks are 8-bit), got {self.ignore_index}")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            raise ValueError(f"--num-classes must be 1..255, got {self.num_classes}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ValueError(f"--crop must be two positive sizes HxW, got {self.crop}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"--scale must be MIN,MAX with 0 < MIN <= MAX, got {self.scale}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.init and self.init_backbone:
            raise ValueError("give either --init (a whole FCN) or --init-backbone (VGG16 ImageNet), not both")


class DivergedError(ValueError):
    """The loss stopped being finite: a user-fixable setting (usually --lr), reported in one line."""


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def poly_lr(step: int, total: int, warmup: int, power: float = 0.9) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** power


class EMA:
    """Exponential moving average of parameters and buffers: a cheap checkpoint average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, ds: SegmentationDataset, norm: Normalization, num_classes: int,
                   ignore_index: int, device: torch.device, indices: list[int] | None = None,
                   amp: bool = False) -> np.ndarray:
    """Confusion matrix of whole-image predictions over ``indices`` (all by default)."""
    model.eval()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in indices if indices is not None else range(len(ds)):
        img, mask = ds.load(i)
        x = norm.apply(torch.from_numpy(img).permute(2, 0, 1)[None].to(device))
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            pred = model(x).argmax(1)[0].cpu().numpy()
        conf += confusion_matrix(mask, pred, num_classes, ignore_index)
    return conf


_CLASS_LAYERS = ("score", "upscore")  # every layer whose shape depends on the class count


def transfer_weights(model: FCN, init: Checkpoint, source: str) -> str:
    """Load every tensor of ``init`` that fits ``model``; the rest keeps the paper's fresh init.

    Covers a changed class count (score and upsampling layers re-initialised)
    and staged training, e.g. FCN-32s -> FCN-16s: the backbone, fc6/fc7 and
    score_fr carry over, the new skip scorer starts at zero and the new
    upsampling layers at bilinear, so the finer net starts out computing
    exactly what the coarser one did. Returns the one-line report.
    """
    src, dst = init.state_dict, model.state_dict()
    same_classes = init.config.num_classes == model.config.num_classes
    keep = {k: v for k, v in src.items() if k in dst and (same_classes or not k.startswith(_CLASS_LAYERS))}
    for k, v in keep.items():
        if v.shape != dst[k].shape:
            raise WeightsError(f"{source}: {k} is {tuple(v.shape)} but this model needs {tuple(dst[k].shape)}; "
                               "the checkpoint's width/fc size must match (drop --width/--fc-channels with --init)")
    model.load_state_dict(keep, strict=False)
    if len(keep) == len(src) == len(dst):
        return f"init: all layers from {source}"

    def layers(keys) -> list[str]:
        return sorted({k.split(".")[0] for k in keys}, key=lambda n: list(dst).index(n + ".weight") if n + ".weight" in dst else 0)

    fresh = [n + (" (zero)" if n.startswith("score") else " (bilinear)" if n.startswith("upscore") else "")
             for n in layers(k for k in dst if k not in keep)]
    dropped = layers(k for k in src if k not in dst)
    what = []
    if not same_classes:
        what.append(f"{init.config.num_classes} -> {model.config.num_classes} classes")
    if init.config.arch != model.config.arch:
        what.append(f"{init.config.arch} -> {model.config.arch}")
    msg = f"init: {source} ({', '.join(what)}): kept {len(layers(keep))} layers, re-initialised {', '.join(fresh)}"
    return msg + (f"; not used: {', '.join(dropped)}" if dropped else "")


def _param_groups(model: FCN, cfg: TrainConfig) -> list[dict]:
    frozen = {id(p) for p in model.final_upsample.parameters()} if cfg.freeze_upsampling else set()
    decay, no_decay, biases = [], [], []
    for name, p in model.named_parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
            continue
        if name.endswith(".bias"):
            biases.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0})
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0, "lr_mult": cfg.bias_lr_mult})
    return groups


class Trainer:
    """One training run. ``log`` receives one-line messages and ``progress(epoch, step, loss)``
    is called after every optimiser step (both on rank 0 only)."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print, progress: Callable | None = None):
        self.cfg = cfg
        self.rank, self.world, self.local_rank = _dist_info()
        self.is_main = self.rank == 0
        self._log = log
        self.progress = progress
        self.out = Path(cfg.out)

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # -- setup ---------------------------------------------------------------
    def _load_split(self, source: str, split: str | None) -> tuple[list, object]:
        cfg = self.cfg
        pairs, problems, coco = load_pairs(Path(source), Path(cfg.images) if cfg.images else None, split,
                                           cfg.ignore_index)
        for p in problems[:20]:
            self.log(f"warning: {p}")
        if len(problems) > 20:
            self.log(f"warning: ... and {len(problems) - 20} more unmatched entries")
        if not pairs:
            raise InputError(f"{source}: no (image, mask) pairs found; check the layout (see `fcn-label finetune --help`)")
        return pairs, coco

    def _datasets(self) -> None:
        cfg = self.cfg
        pairs, self.coco = self._load_split(cfg.data, cfg.split)
        aug = Augment(crop=tuple(cfg.crop), scale=tuple(cfg.scale), ignore_index=cfg.ignore_index)
        self.train_ds = SegmentationDataset(pairs, aug, cache=cfg.cache, coco=self.coco, seed=cfg.seed)
        self.val_ds = None
        if cfg.val:
            vpairs, vcoco = self._load_split(cfg.val, cfg.val_split)
            self.val_ds = SegmentationDataset(vpairs, None, cache=cfg.cache, coco=vcoco)

    @staticmethod
    def _scan_masks(ds: SegmentationDataset) -> tuple[np.ndarray, list, list[tuple[int, str]]]:
        """Label histogram (256 bins), ``(index, labels present, histogram)`` per readable pair, and
        ``(index, one-line reason)`` per pair that cannot be used: any exception is that pair's problem."""
        counts = np.zeros(256, dtype=np.int64)
        present, bad = [], []
        for i in range(len(ds)):
            try:
                _, m = ds.load(i)
            except Exception as e:  # one boundary per pair: unreadable, bomb, mis-sized, bad COCO entry
                p = ds.pairs[i]
                bad.append((i, str(e) if isinstance(e, InputError)
                            else f"{p.mask or p.image}: cannot read this pair ({why(e)}); re-export or remove it"))
                continue
            c = np.bincount(m.ravel(), minlength=256)
            counts += c
            present.append((i, np.nonzero(c)[0], c))
        return counts, present, bad

    def _check_labels(self, ds: SegmentationDataset, present: list, n: int) -> list[tuple[int, str]]:
        bad = []
        for i, labels, _ in present:
            out = [int(v) for v in labels if v >= n and v != self.cfg.ignore_index]
            if out:
                p = ds.pairs[i]
                bad.append((i, f"{p.mask or p.image}: mask values {out[:5]} outside classes 0..{n - 1} and ignore "
                               f"{self.cfg.ignore_index}; fix the mask or set --num-classes / --ignore-index / --classes"))
        return bad

    def _drop_bad(self, splits: list[tuple[str, SegmentationDataset | None, list[tuple[int, str]]]]) -> None:
        """List every bad pair of every split; stop, or with --skip-bad leave them out and say how many."""
        bad = [(name, ds, b) for name, ds, b in splits if ds is not None and b]
        if not bad:
            return
        total = sum(len(b) for _, _, b in bad)
        for _, _, b in bad:
            for _, msg in sorted(b):
                self.log(f"bad pair: {msg}")
        if not self.cfg.skip_bad:
            first = bad[0][2][0][1]
            raise InputError((first if total == 1 else f"{total} pairs cannot be used (listed above)")
                             + "; fix or remove them, or pass --skip-bad to train on the others")
        for name, ds, b in bad:
            drop = {i for i, _ in b}
            keep = [i for i in range(len(ds)) if i not in drop]
            if not keep:
                raise InputError(f"--skip-bad: every one of the {len(ds)} {name} pairs is bad (listed above); "
                                 "nothing is left to train on")
            ds._cache = {new: ds._cache[old] for new, old in enumerate(keep) if old in ds._cache}
            ds.pairs = [ds.pairs[i] for i in keep]
            self.log(f"--skip-bad: left out {len(drop)} of {len(keep) + len(drop)} {name} pairs; "
                     f"using the other {len(keep)}")

    def _class_names(self, init: Checkpoint | None, counts: np.ndarray) -> list[str]:
        cfg = self.cfg
        names, source = None, None
        if cfg.classes:
            names, source = list(cfg.classes), "--classes"
        elif self.coco is not None:
            names, source = self.coco.class_names, str(cfg.data)
        elif (f := find_class_file(cfg.data)) is not None:
            names, self.file_palette = read_class_file(f)
            source = str(f)
            self.log(f"classes: {len(names)} names from {f}")
        if names is not None:
            if cfg.num_classes and cfg.num_classes != len(names):
                raise InputError(f"{source}: lists {len(names)} classes but --num-classes is {cfg.num_classes}; "
                                 "make them agree")
            return names
        if cfg.num_classes:
            if cfg.num_classes == len(CAMVID_CLASSES) and "camvid" in str(cfg.data).lower():
                return list(CAMVID_CLASSES)
            if init is not None and init.config.num_classes == cfg.num_classes:
                return list(init.classes)
            return self._voc_names(cfg.num_classes) or [f"class_{i}" for i in range(cfg.num_classes)]
        if init is not None:
            return list(init.classes)
        labels = [v for v in np.nonzero(counts)[0] if v != cfg.ignore_index]
        if not labels:
            raise InputError(f"{cfg.data}: every mask pixel is the ignore label {cfg.ignore_index}; check --ignore-index")
        n = int(labels[-1]) + 1
        if (names := self._voc_names(n)) is not None:
            return names
        self.log(f"classes: {n} inferred from the masks (largest label {n - 1}); "
                 "pass --classes FILE to name them or --num-classes if some never occur")
        return [f"class_{i}" for i in range(n)]

    def _voc_names(self, n: int) -> list[str] | None:
        """PASCAL VOC's 21 names for a VOC-layout folder with 21 classes and no class file."""
        if n != len(VOC_CLASSES) or detect_layout(Path(self.cfg.data)) != "voc":
            return None
        self.log(f"classes: the 21 PASCAL VOC names (VOC layout, no classes file); "
                 f"pass --classes FILE if {self.cfg.data} uses other classes")
        return list(VOC_CLASSES)

    def _palette(self, names: list[str], init: Checkpoint | None) -> list[tuple[int, int, int]]:
        cfg, n = self.cfg, len(names)
        if cfg.palette:
            pal = [tuple(c) for c in cfg.palette]
        elif self.file_palette:
            pal = self.file_palette
        elif names == list(CAMVID_CLASSES):
            pal = list(CAMVID_PALETTE)
        elif init is not None and list(init.classes) == names:
            pal = list(init.palette)
        else:
            pal = mask_palette(self.train_ds.pairs[0].mask) or voc_palette()
        if len(pal) < n:
            raise InputError(f"the palette has {len(pal)} colours for {n} classes; give one 'name r g b' line per class")
        return pal[:n]

    def setup(self) -> None:
        cfg = self.cfg
        cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device, self.local_rank)
        self._own_group = self.world > 1 and not dist.is_initialized()
        if self._own_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: autotuning pays off
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._datasets()

        init = load_checkpoint(resolve_weights(cfg.init)) if cfg.init else None
        counts, present, bad = self._scan_masks(self.train_ds)
        if len(bad) == len(self.train_ds):  # nothing readable: say so before guessing classes from nothing
            self._drop_bad([("train", self.train_ds, bad)])
        self.file_palette = None
        names = self._class_names(init, counts)
        n = len(names)
        bad += self._check_labels(self.train_ds, present, n)
        dropped = {i for i, _ in bad}
        counts = counts - sum((c for i, _, c in present if i in dropped), np.zeros(256, np.int64))
        val_bad = []
        if self.val_ds is not None:
            _, val_present, val_bad = self._scan_masks(self.val_ds)
            val_bad += self._check_labels(self.val_ds, val_present, n)
        self._drop_bad([("train", self.train_ds, bad), ("val", self.val_ds, val_bad)])
        self.classes = names
        self.palette = self._palette(names, init)
        counts = counts[:n]
        self.class_counts = counts
        self.log(f"train: {len(self.train_ds)} pairs" + (f", val: {len(self.val_ds)} pairs" if self.val_ds else "")
                 + f", {n} classes; pixel share "
                 + ", ".join(f"{names[i]} {100 * c / max(1, counts.sum()):.1f}%" for i, c in enumerate(counts)))
        missing = [names[i] for i in range(n) if counts[i] == 0]
        if missing:
            self.log(f"warning: no training pixels of {', '.join(missing)}; the model cannot learn them")

        if init is not None:
            model_cfg = replace(init.config, arch=cfg.arch or init.config.arch, num_classes=n)
            self.norm = init.normalization
        else:
            model_cfg = FCNConfig(arch=cfg.arch or "fcn8s", num_classes=n, width=cfg.width,
                                  fc_channels=cfg.fc_channels, batch_norm=cfg.batch_norm, padding=cfg.padding,
                                  dropout=cfg.dropout)
            self.norm = IMAGENET
        self.model = FCN(model_cfg)
        for k in ("arch", "width", "fc_channels", "batch_norm", "padding", "dropout"):
            setattr(cfg, k, getattr(model_cfg, k))  # record the model actually trained (--init fixes its shape)
        if init is not None:
            self.log(transfer_weights(self.model, init, cfg.init))
        elif cfg.init_backbone:
            self.model.load_state_dict(vgg16_backbone_state(cfg.init_backbone, model_cfg), strict=False)
            self.log(f"init: VGG16 backbone and fc6/fc7 from {cfg.init_backbone}; score layers zero")
        elif cfg.preset == "paper":
            self.log("warning: the paper preset fine-tunes ImageNet VGG16; from scratch (no --init-backbone) "
                     "it converges slowly")
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.optimizer = self._optimizer()
        if cfg.class_weights == "none":
            w = None
        else:
            w = median_frequency_weights(counts)
            if cfg.class_weights == "sqrt-median":
                w = np.sqrt(w)
            self.log("class weights: " + ", ".join(f"{names[i]} {x:.2f}" for i, x in enumerate(w)))
        self.class_weight = torch.tensor(w, dtype=torch.float32, device=self.device) if w is not None else None
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.world > 1 else self.model)
        per_rank = math.ceil(len(self.train_ds) / self.world)  # DistributedSampler pads to equal shares
        self.batches_per_epoch = math.ceil(per_rank / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / max(1, cfg.accumulate))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self.epoch, self.step, self.best = 0, 0, -1.0
        # position inside the current epoch, saved in mid-epoch checkpoints
        self.batch_in_epoch, self.loss_sum, self.loss_count, self.epoch_seconds = 0, 0.0, 0, 0.0
        self.history: list[dict] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = _param_groups(self.model, cfg)
        for g in groups:
            g["lr"] = cfg.lr * g["lr_mult"]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        return torch.optim.AdamW(groups, lr=cfg.lr)

    def _lr_factor(self) -> float:
        cfg = self.cfg
        if cfg.schedule == "constant":
            return 1.0
        warm = cfg.warmup_epochs * self.steps_per_epoch
        if cfg.schedule == "poly":
            return poly_lr(self.step, self.total_steps, warm)
        if warm and self.step < warm:
            return (self.step + 1) / warm
        t = (self.step - warm) / max(1, self.total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    # -- checkpoints ---------------------------------------------------------
    def _global_loss(self) -> tuple[float, int]:
        """This epoch's (loss sum, batch count) over all ranks; a collective call under DDP."""
        if self.world == 1:
            return self.loss_sum, self.loss_count
        t = torch.tensor([self.loss_sum, float(self.loss_count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0]), int(t[1])

    def checkpoint(self, model: torch.nn.Module, metrics: dict | None = None, train_state: bool = True,
                   epoch_loss: tuple[float, int] = (0.0, 0)) -> Checkpoint:
        cfg = self.cfg
        meta = {
            "dataset": str(cfg.data),
            "val": str(cfg.val) if cfg.val else None,
            "epochs": self.epoch,
            "steps": self.step,
            "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "metrics": metrics or {},
            "torch": str(torch.__version__),
        }
        ts = None
        if train_state:
            ts = {
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": {k: v.detach().cpu() for k, v in self.ema.model.state_dict().items()} if self.ema else None,
                "epoch": self.epoch,
                "step": self.step,
                "best": self.best,
                "history": self.history,
                "torch_rng": torch.get_rng_state(),
                "python_rng": list(random.getstate()[1]),
                # mid-epoch position (all zero at an epoch boundary)
                "batch_in_epoch": self.batch_in_epoch,
                "epoch_loss": [float(epoch_loss[0]), int(epoch_loss[1])],
                "epoch_seconds": self.epoch_seconds,
                "world_size": self.world,
                "batch_size": cfg.batch_size,
                "accumulate": cfg.accumulate,
            }
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return Checkpoint(model.config, sd, self.classes, self.palette, self.norm, cfg.ignore_index, meta, ts)

    def resume(self, path: str | os.PathLike) -> None:
        cfg = self.cfg
        ck = load_checkpoint(path)
        ts = ck.train_state
        if not ts:
            raise WeightsError(f"{path}: has no training state (a 'best' or exported model?); resume from last.pt")
        try:
            self.model.load_state_dict(ts["model"])
            self.optimizer.load_state_dict(ts["optimizer"])
            if self.ema and ts.get("ema"):
                self.ema.model.load_state_dict(ts["ema"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise WeightsError(f"{path}: does not fit this run's model or optimiser ({str(e).splitlines()[0][:200]}); "
                               "resume with the options of the original run (see config.json beside it)") from None
        if ts.get("scaler"):  # empty when saved without AMP
            self.scaler.load_state_dict(ts["scaler"])
        batch = int(ts.get("batch_in_epoch", 0))
        saved = (int(ts.get("world_size", 1)), int(ts.get("batch_size", cfg.batch_size)), int(ts.get("accumulate", cfg.accumulate)))
        if batch and saved != (self.world, cfg.batch_size, cfg.accumulate):
            raise InputError(f"{path}: saved mid-epoch with {saved[0]} process(es), --batch-size {saved[1]}, "
                             f"--accumulate {saved[2]}; resume with the same values to continue that epoch")
        self.epoch, self.step, self.best = int(ts["epoch"]), int(ts["step"]), float(ts["best"])
        self.history = list(ts.get("history", []))
        self.batch_in_epoch = batch
        loss_sum, loss_count = ts.get("epoch_loss", [0.0, 0])
        # the saved sums are global; rank 0 carries them and the end-of-epoch reduction adds the rest
        self.loss_sum, self.loss_count = (float(loss_sum), int(loss_count)) if self.is_main else (0.0, 0)
        self.epoch_seconds = float(ts.get("epoch_seconds", 0.0))
        torch.set_rng_state(ts["torch_rng"])
        st = random.getstate()
        random.setstate((st[0], tuple(ts["python_rng"]), st[2]))
        old = ck.metadata.get("train_config", {})
        now = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        changed = [f"{k} {old[k]!r} -> {now[k]!r}" for k in now if k in old and k not in RESUME_FREE and old[k] != now[k]]
        if changed:
            self.log("warning: resuming with changed options: " + "; ".join(changed))
        where = f"epoch {self.epoch}" + (f" + {batch} batches" if batch else "")
        self.log(f"resumed from {path}: {where}, step {self.step}, best val mean IU {self.best:.4f}")

    # -- loop ----------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        """This rank's batches for the current epoch, minus those already trained on."""
        cfg = self.cfg
        self.train_ds.epoch = self.epoch
        # seed*1000 + epoch: the same order a single process always used; every rank
        # takes its interleaved share, so N ranks x batch B see what 1 rank x N*B sees.
        sampler = torch.utils.data.DistributedSampler(self.train_ds, self.world, self.rank, shuffle=True,
                                                      seed=cfg.seed * 1000, drop_last=False)
        sampler.set_epoch(self.epoch)
        indices = list(sampler)[self.batch_in_epoch * cfg.batch_size:]
        return torch.utils.data.DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=indices,
                                           num_workers=cfg.workers, drop_last=False, persistent_workers=False,
                                           pin_memory=self.device.type == "cuda",
                                           generator=torch.Generator().manual_seed(cfg.seed))

    def validate(self) -> dict:
        if self.val_ds is None:
            return {}
        model = self.ema.model if self.ema else self.model
        n = len(self.classes)
        idx = list(range(self.rank, len(self.val_ds), self.world))
        conf = evaluate_model(model, self.val_ds, self.norm, n, self.cfg.ignore_index, self.device, idx, self.cfg.amp)
        if self.world > 1:
            t = torch.from_numpy(conf).to(self.device)
            dist.all_reduce(t)
            conf = t.cpu().numpy()
        s = scores(conf)
        return {"val_" + k: v for k, v in s.summary().items()} | {"val_iou": [None if np.isnan(x) else float(x) for x in s.iou]}

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to optimise, mean per-pixel loss to report).

        The mean is over valid (weighted) pixels and is 0, not NaN, for a crop
        that holds only ignored pixels. The summed loss is scaled by the world
        size because DDP averages gradients across ranks.
        """
        cfg = self.cfg
        total = F.cross_entropy(out.float(), y, weight=self.class_weight, ignore_index=cfg.ignore_index, reduction="sum")
        valid = y != cfg.ignore_index
        if self.class_weight is not None:
            denom = self.class_weight[y[valid]].sum()
        else:
            denom = valid.sum().to(total.dtype)
        mean = total / denom.clamp_min(1e-12)
        return (total * self.world if cfg.loss == "sum" else mean), mean.detach()

    def _seed_step(self) -> None:
        """Dropout's randomness as a pure function of (seed, rank, step): exact under resume."""
        s = np.random.SeedSequence([self.cfg.seed, self.rank, self.step]).generate_state(1)[0]
        torch.manual_seed(int(s))

    def train_epoch(self) -> bool:
        """Train to the end of the epoch (True) or until ``max_steps`` (False, state saved)."""
        cfg = self.cfg
        self.ddp.train()
        loader = self._loader()
        n = len(loader)
        acc = max(1, cfg.accumulate)
        t0 = time.time() - self.epoch_seconds
        self.optimizer.zero_grad(set_to_none=True)
        for it, (x, y) in enumerate(loader):
            if it % acc == 0:
                self._seed_step()
                group = min(acc, n - it)
            boundary = (it + 1) % acc == 0 or it + 1 == n
            x = self.norm.apply(x.to(self.device, non_blocking=True).mul_(255.0))
            y = y.to(self.device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            sync = self.ddp.no_sync() if self.world > 1 and not boundary else nullcontext()
            with sync:
                with torch.autocast(self.device.type, enabled=cfg.amp and self.device.type == "cuda"):
                    out = self.ddp(x)
                loss, shown = self._loss(out, y)
                if not torch.isfinite(loss):
                    raise DivergedError(f"loss became {loss.item()} at step {self.step}; lower --lr")
                # a mean loss averages over the accumulated micro-batches, the paper's sum adds them up
                self.scaler.scale(loss / group if cfg.loss == "mean" else loss).backward()
            self.loss_sum += shown.item()
            self.loss_count += 1
            self.batch_in_epoch += 1
            if not boundary:
                continue
            f = self._lr_factor()
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.lr * g["lr_mult"] * f
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.ema:
                self.ema.update(self.model, self.step)
            self.epoch_seconds = time.time() - t0
            if self.progress and self.is_main:
                self.progress(self.epoch, self.step, self.loss_sum / max(1, self.loss_count))
            if it + 1 == n:
                break  # the epoch's end is saved by run()
            stop = bool(cfg.max_steps and self.step >= cfg.max_steps)
            val_now = bool(cfg.val_every_steps and self.val_ds is not None and self.step % cfg.val_every_steps == 0)
            if val_now or stop or (cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0):
                self._save_partial(val_now)
                self.ddp.train()
                t0 = time.time() - self.epoch_seconds  # validation time is not training time
            if stop:
                return False
        return True

    def _save_partial(self, with_val: bool) -> None:
        """Checkpoint (and optionally validate) mid-epoch; collective under DDP."""
        loss_sum, count = self._global_loss()
        row = None
        if with_val:
            row = {"epoch": round(self.epoch + self.batch_in_epoch / self.batches_per_epoch, 4), "step": self.step,
                   "loss": loss_sum / max(1, count), "lr": self.optimizer.param_groups[0]["lr"],
                   "train_seconds": self.epoch_seconds}
            t1 = time.time()
            row |= self.validate()
            row["val_seconds"] = time.time() - t1
            self.history.append(row)
        self._save(row, (loss_sum, count))
        if row:
            self.log(self._format(row))

    def _end_epoch(self) -> None:
        cfg = self.cfg
        loss_sum, count = self._global_loss()
        self.epoch += 1
        row = {"epoch": self.epoch, "step": self.step, "loss": loss_sum / max(1, count),
               "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": self.epoch_seconds}
        self.batch_in_epoch, self.loss_sum, self.loss_count, self.epoch_seconds = 0, 0.0, 0, 0.0
        validated = bool(cfg.val and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs))
        if validated:
            t1 = time.time()
            row |= self.validate()
            row["val_seconds"] = time.time() - t1
        self.history.append(row)
        self._save(row, write_last=validated or self.epoch % cfg.save_every == 0 or self.epoch >= cfg.epochs)
        self.log(self._format(row))

    def run(self, resume: str | None = None) -> dict:
        cfg = self.cfg
        self.setup()
        if resume:
            if self.is_main and (n := remove_stale_temp(self.out)):
                self.log(f"removed {n} unfinished temporary file(s) of a killed run from {self.out}")
            self.resume(resume)
        if self.is_main:
            with atomic_path(self.out / "config.json") as tmp:
                tmp.write_text(json.dumps(asdict(self.cfg), indent=2, default=list))
        while self.epoch < cfg.epochs and not (cfg.max_steps and self.step >= cfg.max_steps):
            if not self.train_epoch():
                break
            self._end_epoch()
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            if self._own_group:
                dist.destroy_process_group()
        return self.history[-1] if self.history else {}

    def _save(self, row: dict | None, epoch_loss: tuple[float, int] = (0.0, 0), write_last: bool = True) -> None:
        """best.pt when validation improved, last.pt unless told not to, and the logs; rank 0 only."""
        if not self.is_main:
            return
        metrics = {k: v for k, v in (row or {}).items() if k.startswith("val_")}
        best_model = self.ema.model if self.ema else self.model
        miou = metrics.get("val_mean_iou")
        if miou is not None and miou > self.best:
            self.best = miou
            save_checkpoint(self.checkpoint(best_model, metrics, train_state=False), self.out / "best.pt")
        if write_last:
            save_checkpoint(self.checkpoint(best_model, metrics, train_state=True, epoch_loss=epoch_loss),
                            self.out / "last.pt")
        if row is None:
            return
        with atomic_path(self.out / "log.csv") as tmp:
            keys = []
            for r in self.history:
                keys += [k for k in r if k not in keys and k != "val_iou"]
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.history)
        with atomic_path(self.out / "log.json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))

    @staticmethod
    def _format(row: dict) -> str:
        s = f"epoch {row['epoch']}: loss {row['loss']:.4f} lr {row['lr']:.2e} ({row['train_seconds']:.0f}s)"
        if "val_mean_iou" in row:
            s += (f" | val mean IU {100 * row['val_mean_iou']:.2f} pixel acc {100 * row['val_pixel_accuracy']:.2f}"
                  f" mean acc {100 * row['val_mean_accuracy']:.2f}")
        return s
