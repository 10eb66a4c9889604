"""Training and fine-tuning loop: resumable, validated as it goes, DDP-ready.

Launch under ``torchrun`` and it runs DistributedDataParallel (gloo on CPU,
NCCL on CUDA); rank 0 logs and writes checkpoints, metrics are reduced across
ranks. Every checkpoint is written atomically and carries the optimiser,
scheduler, EMA and RNG state, so ``--resume`` continues where a killed run
stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import Augment, SegmentationDataset, class_frequencies, load_pairs, median_frequency_weights
from .io import InputError, atomic_path
from .metrics import confusion_matrix, scores
from .model import FCN, FCNConfig
from .weights import (
    CAMVID_CLASSES, CAMVID_PALETTE, IMAGENET, Checkpoint, Normalization, WeightsError, load_checkpoint,
    save_checkpoint, vgg16_backbone_state, voc_palette,
)

PRESETS = {
    # The paper's recipe (sec. 4.3): SGD momentum 0.9, weight decay 5e-4, fixed lr 1e-4
    # for VGG16 with 2x lr for biases, score layers zero-initialised, upsampling
    # fixed bilinear except the final one; batch of 20 whole images in the paper.
    "paper": dict(optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, schedule="constant", bias_lr_mult=2.0,
                  freeze_upsampling=True, class_weights="none", ema=0.0, warmup_epochs=0),
    # What trains a compact BN model from scratch in a few CPU hours: AdamW, poly decay
    # with warm-up, softened median-frequency class weights, weight averaging (EMA).
    "modern": dict(optimizer="adamw", lr=2e-3, momentum=0.9, weight_decay=1e-4, schedule="poly", bias_lr_mult=1.0,
                   freeze_upsampling=False, class_weights="sqrt-median", ema=0.998, warmup_epochs=2),
}


@dataclass
class TrainConfig:
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
    arch: str = "fcn8s"
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
    freeze_upsampling: bool = False
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

    def apply_preset(self, explicit: set[str]) -> None:
        """Fill preset values for every option the user did not set explicitly."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for k, v in PRESETS[self.preset].items():
            if k not in explicit:
                setattr(self, k, v)


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


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


def _param_groups(model: FCN, cfg: TrainConfig) -> list[dict]:
    decay, no_decay, biases, frozen = [], [], [], []
    for name, p in model.named_parameters():
        if cfg.freeze_upsampling and name.startswith("upscore") and not name.startswith(
            {"fcn8s": "upscore8", "fcn16s": "upscore16", "fcn32s": "upscore."}[model.config.arch]
        ):
            p.requires_grad_(False)
            frozen.append(name)
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
    """One training run. ``log`` receives one-line messages (rank 0 only)."""

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
    def _datasets(self) -> None:
        cfg = self.cfg
        pairs, problems, coco = load_pairs(Path(cfg.data), Path(cfg.images) if cfg.images else None, cfg.split,
                                           cfg.ignore_index)
        for p in problems[:20]:
            self.log(f"warning: {p}")
        if len(problems) > 20:
            self.log(f"warning: ... and {len(problems) - 20} more unmatched entries")
        if not pairs:
            raise InputError(f"{cfg.data}: no (image, mask) pairs found; check the layout (see `fcn-label finetune --help`)")
        self.coco = coco
        aug = Augment(crop=tuple(cfg.crop), scale=tuple(cfg.scale), ignore_index=cfg.ignore_index)
        self.train_ds = SegmentationDataset(pairs, aug, cache=cfg.cache, coco=coco, seed=cfg.seed)
        self.val_ds = None
        if cfg.val:
            vpairs, vproblems, vcoco = load_pairs(Path(cfg.val), Path(cfg.images) if cfg.images else None,
                                                   cfg.val_split, cfg.ignore_index)
            for p in vproblems[:20]:
                self.log(f"warning: {p}")
            self.val_ds = SegmentationDataset(vpairs, None, cache=cfg.cache, coco=vcoco)

    def _class_names(self, init: Checkpoint | None) -> list[str]:
        cfg = self.cfg
        if cfg.classes:
            return list(cfg.classes)
        if self.coco is not None:
            return self.coco.class_names
        if cfg.num_classes:
            if cfg.num_classes == len(CAMVID_CLASSES) and "camvid" in str(cfg.data).lower():
                return list(CAMVID_CLASSES)
            if init is not None and init.config.num_classes == cfg.num_classes:
                return list(init.classes)
            return [f"class_{i}" for i in range(cfg.num_classes)]
        if init is not None:
            return list(init.classes)
        raise InputError("cannot tell the number of classes; pass --num-classes or --classes FILE")

    def _validate_masks(self, num_classes: int) -> np.ndarray:
        """Class histogram of the training masks; values outside the classes are an error."""
        counts = np.zeros(256, dtype=np.int64)
        bad = []
        for i in range(len(self.train_ds)):
            try:
                _, m = self.train_ds.load(i)
            except InputError as e:
                bad.append(str(e))
                continue
            c = np.bincount(m.ravel(), minlength=256)
            out = [v for v in np.nonzero(c)[0] if v >= num_classes and v != self.cfg.ignore_index]
            if out:
                bad.append(f"{self.train_ds.pairs[i].mask}: mask values {out[:5]} outside classes 0..{num_classes - 1} "
                           f"and ignore {self.cfg.ignore_index}; fix the mask or set --num-classes / --ignore-index")
            counts += c
        if bad:
            raise InputError(bad[0] + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""))
        return counts[:num_classes]

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _pick_device(cfg.device, self.local_rank)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._datasets()

        init = None
        if cfg.init:
            init = load_checkpoint(cfg.init)
        names = self._class_names(init)
        n = len(names)
        self.classes = names
        self.palette = [tuple(c) for c in cfg.palette] if cfg.palette else (
            list(CAMVID_PALETTE) if names == list(CAMVID_CLASSES) else
            (list(init.palette) if init is not None and len(init.palette) >= n else voc_palette()[:n]))
        counts = self._validate_masks(n)
        self.class_counts = counts
        self.log(f"train: {len(self.train_ds)} pairs, {n} classes; pixel share "
                 + ", ".join(f"{names[i]} {100 * c / max(1, counts.sum()):.1f}%" for i, c in enumerate(counts)))

        if init is not None:
            mcfg = init.config
            self.norm = init.normalization
            model_cfg = FCNConfig(**{**mcfg.to_dict(), "num_classes": n})
        else:
            model_cfg = FCNConfig(arch=cfg.arch, num_classes=n, width=cfg.width, fc_channels=cfg.fc_channels,
                                  batch_norm=cfg.batch_norm, padding=cfg.padding, dropout=cfg.dropout)
            self.norm = IMAGENET
        self.model = FCN(model_cfg)
        if init is not None:
            sd = init.state_dict
            if init.config.num_classes != n:
                keep = {k: v for k, v in sd.items() if not k.startswith(("score", "upscore"))}
                self.model.load_state_dict(keep, strict=False)
                self.log(f"init: {cfg.init} has {init.config.num_classes} classes, this data {n}: "
                         "score and upsampling layers re-initialised, all other layers kept")
            else:
                self.model.load_state_dict(sd, strict=True)
                self.log(f"init: all layers from {cfg.init}")
        elif cfg.init_backbone:
            self.model.load_state_dict(vgg16_backbone_state(cfg.init_backbone, model_cfg), strict=False)
            self.log(f"init: VGG16 backbone and fc6/fc7 from {cfg.init_backbone}; score layers zero")
            self.norm = IMAGENET
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
            elif cfg.class_weights != "median":
                raise ValueError(f"unknown class weights {cfg.class_weights!r}; choose none, median, sqrt-median")
            self.log("class weights: " + ", ".join(f"{names[i]} {x:.2f}" for i, x in enumerate(w)))
        self.class_weight = torch.tensor(w, dtype=torch.float32, device=self.device) if w is not None else None
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.world > 1 else self.model)
        self.steps_per_epoch = math.ceil(len(self.train_ds) / (cfg.batch_size * self.world)) // max(1, cfg.accumulate)
        self.steps_per_epoch = max(1, self.steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self.epoch, self.step, self.best = 0, 0, -1.0
        self.history: list[dict] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = _param_groups(self.model, cfg)
        for g in groups:
            g["lr"] = cfg.lr * g["lr_mult"]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr)
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")

    def _lr_factor(self) -> float:
        cfg = self.cfg
        if cfg.schedule == "constant":
            return 1.0
        warm = cfg.warmup_epochs * self.steps_per_epoch
        if cfg.schedule == "poly":
            return poly_lr(self.step, self.total_steps, warm)
        if cfg.schedule == "cosine":
            if warm and self.step < warm:
                return (self.step + 1) / warm
            t = (self.step - warm) / max(1, self.total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant, poly, cosine")

    # -- checkpoints ---------------------------------------------------------
    def checkpoint(self, model: torch.nn.Module, metrics: dict | None = None, train_state: bool = True) -> Checkpoint:
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
            }
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return Checkpoint(model.config, sd, self.classes, self.palette, self.norm, cfg.ignore_index, meta, ts)

    def resume(self, path: str | os.PathLike) -> None:
        ck = load_checkpoint(path)
        ts = ck.train_state
        if not ts:
            raise WeightsError(f"{path}: has no training state (a 'best' or exported model?); resume from last.pt")
        self.model.load_state_dict(ts["model"])
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scaler.load_state_dict(ts["scaler"])
        if self.ema and ts.get("ema"):
            self.ema.model.load_state_dict(ts["ema"])
        self.epoch, self.step, self.best = int(ts["epoch"]), int(ts["step"]), float(ts["best"])
        self.history = list(ts.get("history", []))
        torch.set_rng_state(ts["torch_rng"])
        st = random.getstate()
        random.setstate((st[0], tuple(ts["python_rng"]), st[2]))
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}, best val mean IU {self.best:.4f}")

    # -- loop ----------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        self.train_ds.epoch = self.epoch
        if self.world > 1:
            sampler = torch.utils.data.DistributedSampler(self.train_ds, self.world, self.rank, shuffle=True,
                                                          seed=cfg.seed, drop_last=False)
            sampler.set_epoch(self.epoch)
        else:
            g = torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch)
            sampler = torch.randperm(len(self.train_ds), generator=g).tolist()
        return torch.utils.data.DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=sampler,
                                           num_workers=cfg.workers, drop_last=False,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

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

    def train_epoch(self) -> float:
        cfg = self.cfg
        self.ddp.train()
        total, count = 0.0, 0
        loader = self._loader()
        acc = max(1, cfg.accumulate)
        self.optimizer.zero_grad(set_to_none=True)
        for it, (x, y) in enumerate(loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            mean = torch.tensor(self.norm.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(self.norm.std, device=self.device).view(1, 3, 1, 1)
            x = x * (255.0 * self.norm.scale)
            if self.norm.bgr:
                x = x.flip(1)
            x = (x - mean) / std
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, enabled=cfg.amp and self.device.type == "cuda"):
                out = self.ddp(x)
                loss = F.cross_entropy(out.float(), y, weight=self.class_weight, ignore_index=cfg.ignore_index)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at step {self.step}; lower --lr")
            self.scaler.scale(loss / acc).backward()
            total += loss.item()
            count += 1
            if (it + 1) % acc == 0 or it + 1 == len(loader):
                f = self._lr_factor()
                for g in self.optimizer.param_groups:
                    g["lr"] = cfg.lr * g["lr_mult"] * f
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema:
                    self.ema.update(self.model, self.step)
                if self.progress:
                    self.progress(self.epoch, self.step, total / count)
                if cfg.max_steps and self.step >= cfg.max_steps:
                    break
        return total / max(1, count)

    def run(self, resume: str | None = None) -> dict:
        cfg = self.cfg
        self.setup()
        if resume:
            self.resume(resume)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list))
        while self.epoch < cfg.epochs and not (cfg.max_steps and self.step >= cfg.max_steps):
            t0 = time.time()
            loss = self.train_epoch()
            self.epoch += 1
            row = {"epoch": self.epoch, "step": self.step, "loss": loss,
                   "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": time.time() - t0}
            if cfg.val and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
                t1 = time.time()
                row |= self.validate()
                row["val_seconds"] = time.time() - t1
            if self.world > 1:
                t = torch.tensor([row["loss"]], device=self.device)
                dist.all_reduce(t)
                row["loss"] = float(t) / self.world
            self.history.append(row)
            self._save(row)
            self.log(self._format(row))
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
        return self.history[-1] if self.history else {}

    def _save(self, row: dict) -> None:
        if not self.is_main:
            return
        miou = row.get("val_mean_iou")
        metrics = {k: v for k, v in row.items() if k.startswith("val_")}
        best_model = self.ema.model if self.ema else self.model
        if miou is not None and miou > self.best:
            self.best = miou
            save_checkpoint(self.checkpoint(best_model, metrics, train_state=False), self.out / "best.pt")
        save_checkpoint(self.checkpoint(best_model, metrics, train_state=True), self.out / "last.pt")
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
