"""Every option of a training run (TrainConfig), the two presets and the valid choices."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..choices import ARCHS

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
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
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
                raise ConfigError(f"unknown {k.replace('_', '-')} {v!r}; choose one of {', '.join(allowed)}")
        for k in ("epochs", "batch_size", "accumulate", "val_every", "save_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}")
        for k in ("checkpoint_every_steps", "val_every_steps", "max_steps", "workers", "threads", "warmup_epochs"):
            if getattr(self, k) < 0:
                raise ConfigError(f"--{k.replace('_', '-')} must be 0 or more, got {getattr(self, k)}")
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"--ignore-index must be 0..255 (masks are 8-bit), got {self.ignore_index}")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            raise ConfigError(f"--num-classes must be 1..255, got {self.num_classes}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ConfigError(f"--crop must be two positive sizes HxW, got {self.crop}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"--scale must be MIN,MAX with 0 < MIN <= MAX, got {self.scale}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.init and self.init_backbone:
            raise ConfigError("give either --init (a whole FCN) or --init-backbone (VGG16 ImageNet), not both")


class DivergedError(ConfigError):
    """The loss stopped being finite: a user-fixable setting (usually --lr), reported in one line."""
