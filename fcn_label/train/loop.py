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
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint, Normalization, WeightsError, load_checkpoint, save_checkpoint
from ..images import InputError, atomic_path, remove_stale_temp, write_csv_atomic
from ..metrics import confusion_matrix, scores
from ..devices import dist_info, pick_device
from . import distributed
from .config import DEFAULT_IGNORE, RESUME_FREE, DivergedError, TrainConfig
from .data import SegmentationDataset
from .losses import lovasz_softmax, ohem_target
from .setup import Parts, build


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


class Trainer:
    """One training run. ``log`` receives one-line messages and ``progress(epoch, step, loss)``
    is called after every optimiser step (both on rank 0 only)."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print, progress: Callable | None = None,
                 parts: Parts | None = None):
        self.cfg = cfg
        self.parts = parts  # None: built from cfg by setup()
        self.rank, self.world, self.local_rank = dist_info()
        self.is_main = self.rank == 0
        self._log = log
        self.progress = progress
        self.out = Path(cfg.out)
        # called on rank 0 after every save (checkpoints and logs in place): the CLI uploads a remote --out
        self.saved: Callable[[], None] | None = None
        # how a checkpoint's metadata names the data and run folders: the CLI maps a staged local copy
        # back to the URL it came from, so the record names what the user gave
        self.recorded: Callable[[str], str] = str

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # -- setup ---------------------------------------------------------------
    def setup(self) -> None:
        """The process side (threads, device, process group, determinism, seeds), then the parts and the loop state."""
        cfg = self.cfg
        cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device, self.local_rank)
        self._own_group = distributed.init_group(self.world, self.device)
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
        parts = self.parts or build(cfg, self.device, self.log)
        if cfg.ignore_index is None:  # parts built elsewhere: build() did not settle it
            cfg.ignore_index = DEFAULT_IGNORE
        self.train_ds, self.val_ds = parts.train_ds, parts.val_ds
        self.classes, self.palette, self.class_counts = parts.classes, parts.palette, parts.class_counts
        self.norm, self.model, self.optimizer = parts.norm, parts.model, parts.optimizer
        self.class_weight = parts.class_weight
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
        total, count = distributed.sum_over_ranks([self.loss_sum, float(self.loss_count)], self.world, self.device)
        return float(total), int(count)

    def checkpoint(self, model: torch.nn.Module, metrics: dict | None = None, train_state: bool = True,
                   epoch_loss: tuple[float, int] = (0.0, 0)) -> Checkpoint:
        cfg = self.cfg
        meta = {
            "dataset": self.recorded(str(cfg.data)),
            "val": self.recorded(str(cfg.val)) if cfg.val else None,
            "epochs": self.epoch,
            "steps": self.step,
            "train_config": {k: (list(v) if isinstance(v, tuple) else self.recorded(v) if isinstance(v, str) else v)
                             for k, v in asdict(cfg).items()},
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
                             f"accumulate {saved[2]}; resume with the same values to continue that epoch")
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

    def score_val(self) -> dict:
        """The --val set scored with the validated model (EMA when on); the figures summed over ranks."""
        if self.val_ds is None:
            return {}
        model = self.ema.model if self.ema else self.model
        n = len(self.classes)
        idx = list(range(self.rank, len(self.val_ds), self.world))
        conf = evaluate_model(model, self.val_ds, self.norm, n, self.cfg.ignore_index, self.device, idx, self.cfg.amp)
        conf = distributed.sum_over_ranks(conf, self.world, self.device)
        s = scores(conf)
        return {"val_" + k: v for k, v in s.summary().items()} | {"val_iou": [None if np.isnan(x) else float(x) for x in s.iou]}

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to optimise, mean per-pixel loss to report).

        The mean is over valid (weighted) pixels and is 0, not NaN, for a crop
        that holds only ignored pixels. The summed loss is scaled by the world
        size because DDP averages gradients across ranks. ``criterion`` ohem
        keeps only the hard pixels in that mean; lovasz mixes in the Lovász-softmax loss.
        """
        cfg = self.cfg
        weight = self._class_weight_now()
        if cfg.criterion == "ohem":
            y = ohem_target(out, y, cfg.ignore_index, cfg.ohem_thresh, cfg.ohem_min_kept)
        total = F.cross_entropy(out.float(), y, weight=weight, ignore_index=cfg.ignore_index, reduction="sum")
        valid = y != cfg.ignore_index
        if weight is not None:
            denom = weight[y[valid]].sum()
        else:
            denom = valid.sum().to(total.dtype)
        mean = total / denom.clamp_min(1e-12)
        if cfg.criterion == "lovasz":
            lovasz = lovasz_softmax(out.float().softmax(1), y, cfg.ignore_index)
            mean = lovasz if cfg.loss_mix == 1 else (1 - cfg.loss_mix) * mean + cfg.loss_mix * lovasz
        return (total * self.world if cfg.loss == "sum" else mean), mean.detach()

    def _class_weight_now(self) -> torch.Tensor | None:
        """The class weights at this step: as built, or (class_weight_decay) moved linearly to uniform by the
        run's last step; a pure function of the step, so exact under resume."""
        w = self.class_weight
        if w is None or not self.cfg.class_weight_decay:
            return w
        t = min(1.0, self.step / max(1, self.total_steps))
        return w + (1 - w) * t

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
            row |= self.score_val()
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
            row |= self.score_val()
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
        distributed.close_group(self.world, self._own_group)
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
        if row is not None:
            self._write_logs()
        if self.saved is not None:
            self.saved()

    def _write_logs(self) -> None:
        keys = []
        for r in self.history:
            keys += [k for k in r if k not in keys and k != "val_iou"]
        # as csv.DictWriter wrote it: a key a row lacks is empty, a NaN figure is "nan"
        log = pd.DataFrame([[r.get(k, "") for k in keys] for r in self.history], columns=keys, dtype=object)
        write_csv_atomic(log, self.out / "log.csv", lineterminator="\r\n", na_rep="nan")
        with atomic_path(self.out / "log.json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))

    @staticmethod
    def _format(row: dict) -> str:
        s = f"epoch {row['epoch']}: loss {row['loss']:.4f} lr {row['lr']:.2e} ({row['train_seconds']:.0f}s)"
        if "val_mean_iou" in row:
            s += (f" | val mean IU {100 * row['val_mean_iou']:.2f} pixel acc {100 * row['val_pixel_accuracy']:.2f}"
                  f" mean acc {100 * row['val_mean_accuracy']:.2f}")
        return s
