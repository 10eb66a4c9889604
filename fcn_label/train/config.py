"""Every option of a training run (TrainConfig), the two presets, the valid choices, and reading a config file.

A config file (TOML, or the ``config.json`` a run writes) holds any of the
TrainConfig fields as keys; :func:`read_config_file` checks each key and type
so a typo is one line naming the file and the key. docs/finetune-config.md
describes every key.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

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
    "criterion": ("ce", "ohem", "lovasz"),
}
# The ignore label when neither the user nor --init names one (VOC's "void" border).
DEFAULT_IGNORE = 255
# The fields `fcn-label finetune` has a flag for (what a run needs every time); the rest are config keys only.
FLAGS = ("data", "val", "out", "images", "classes", "palette", "num_classes", "ignore_index", "init", "preset",
         "epochs", "batch_size", "lr", "device", "amp")


def option_name(field: str) -> str:
    """How a message names an option: ``--ignore-index`` for a flag, ``skip_bad`` for a config key."""
    return f"--{field.replace('_', '-')}" if field in FLAGS else field
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
    ignore_index: int | None = None  # None: --init's ignore label, else DEFAULT_IGNORE (set by setup.build)
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
    # recipe options added later; their defaults reproduce runs made before they existed
    class_weight_power: float = 1.0  # the class weights raised to this power (0 = none, 1 = as chosen)
    class_weight_decay: bool = False  # the class weights move linearly to uniform over the run
    criterion: str = "ce"  # per-pixel cross-entropy, ohem (the hardest pixels only) or lovasz (Lovász-softmax)
    ohem_thresh: float = 0.7  # ohem: pixels whose true-class probability is below this are hard
    ohem_min_kept: int = 20000  # ohem: at least this many pixels per image are kept
    loss_mix: float = 1.0  # lovasz: the loss is (1 - loss_mix) * cross-entropy + loss_mix * Lovász
    jitter: float = 0.3  # brightness / contrast / saturation amplitude of the colour jitter (0 = off)
    blur_p: float = 0.2  # probability of a Gaussian blur per crop
    hflip: bool = True  # random horizontal flip

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
                raise ConfigError(f"unknown {option_name(k).lstrip('-')} {v!r}; choose one of {', '.join(allowed)}")
        for k in ("epochs", "batch_size", "accumulate", "val_every", "save_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{option_name(k)} must be at least 1, got {getattr(self, k)}")
        for k in ("checkpoint_every_steps", "val_every_steps", "max_steps", "workers", "threads", "warmup_epochs"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{option_name(k)} must be 0 or more, got {getattr(self, k)}")
        if self.ignore_index is not None and not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"--ignore-index must be 0..255 (masks are 8-bit), got {self.ignore_index}")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            raise ConfigError(f"--num-classes must be 1..255, got {self.num_classes}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ConfigError(f"crop must be two positive sizes HxW, got {self.crop}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scale must be MIN,MAX with 0 < MIN <= MAX, got {self.scale}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.class_weight_power < 0:
            raise ConfigError(f"class_weight_power must be 0 or more, got {self.class_weight_power}")
        if not 0 < self.ohem_thresh <= 1:
            raise ConfigError(f"ohem_thresh must be in (0, 1], got {self.ohem_thresh}")
        if self.ohem_min_kept < 1:
            raise ConfigError(f"ohem_min_kept must be at least 1, got {self.ohem_min_kept}")
        if not 0 <= self.loss_mix <= 1:
            raise ConfigError(f"loss_mix must be in [0, 1], got {self.loss_mix}")
        if self.jitter < 0 or not 0 <= self.blur_p <= 1:
            raise ConfigError(f"jitter must be 0 or more and blur_p in [0, 1], got {self.jitter} and {self.blur_p}")
        if self.criterion != "ce" and self.loss == "sum":
            raise ConfigError(f"criterion {self.criterion} is a mean over pixels; use it with loss = \"mean\"")
        if self.init and self.init_backbone:
            raise ConfigError("give either --init (a whole FCN) or init_backbone (VGG16 ImageNet), not both")


class DivergedError(ConfigError):
    """The loss stopped being finite: a user-fixable setting (usually --lr), reported in one line."""


def _hints() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, v, hint, where: str):
    """``v`` as the field's type; a value of another type is the user's to fix, named with its key."""
    def bad(expected: str):
        return ConfigError(f"{where}: key {name!r}: expected {expected}, got {v!r}")

    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if v is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("a whole number")
        return v
    if hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number")
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if origin is tuple:  # crop (H, W) or scale (MIN, MAX): two numbers, or "288x384" / "0.5,2.0"
        cast = args[0]
        if isinstance(v, str):
            try:
                v = [float(x) for x in v.lower().replace("x", ",").split(",")]
            except ValueError:
                raise bad("two numbers") from None
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise bad("two numbers")
        if cast is int and not all(float(x).is_integer() for x in v):
            raise bad("two whole numbers")
        return tuple(cast(x) for x in v)
    if origin is list and args == (str,):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad("a list of strings")
        return list(v)
    if origin is list:  # palette: [[r, g, b], ...]
        if not isinstance(v, list) or not all(isinstance(c, (list, tuple)) and len(c) == 3
                                              and all(isinstance(x, int) and 0 <= x <= 255 for x in c) for c in v):
            raise bad("a list of [r, g, b] colours (0-255)")
        return [tuple(c) for c in v]
    raise ValueError(f"TrainConfig.{name}: no reader for {hint}")  # a new field needs a case here


def config_values(values: dict, where: str) -> dict:
    """Check a mapping of TrainConfig keys (from a file, or --set) and give each value its field's type."""
    hints = _hints()
    out = {}
    for k, v in values.items():
        if k not in hints:
            raise ConfigError(f"{where}: unknown key {k!r}; the keys are TrainConfig's fields, "
                              "listed in docs/finetune-config.md and `fcn-label finetune --help`")
        out[k] = _coerce(k, v, hints[k], where)
    return out


def read_config_file(path: str | Path) -> dict:
    """The keys of a TOML file or of the ``config.json`` a run wrote, checked (see :func:`config_values`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; give a .toml file (or a run's config.json)")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = _toml().loads(text)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are both ValueErrors
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} "
                          f"({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of keys, got {type(data).__name__}")
    return config_values(data, str(path))


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading a TOML config needs Python 3.11 or the 'tomli' package; "
                              "or give the keys as JSON (a .json file)") from None
    return tomllib


def parse_set(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (--set) as raw values: VALUE is read as a TOML value, else taken as a string."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set class_weights=none")
        try:
            out[key.strip()] = _toml().loads(f"v = {text.strip()}")["v"]
        except ValueError:
            out[key.strip()] = text.strip()
    return out


def load_config(data: str | None = None, config: str | Path | None = None, sets: Sequence[str] = (),
                overrides: dict | None = None) -> tuple[TrainConfig, set[str]]:
    """A run's TrainConfig from the preset, a config file, ``KEY=VALUE`` pairs and explicit values (later wins;
    None in ``overrides`` means not given), validated; also the keys the pairs set."""
    kw = read_config_file(config) if config is not None else {}
    set_kw = config_values(parse_set(list(sets)), "--set")
    kw |= set_kw
    kw |= {k: v for k, v in (overrides or {}).items() if v is not None}
    if data is not None:
        kw["data"] = data
    if not kw.get("data"):
        raise ConfigError("no training data: give DATA (a folder, list file or COCO .json)"
                          + (f" or a 'data' key in {config}" if config is not None else ""))
    cfg = TrainConfig(**kw)
    cfg.apply_preset(set(kw))
    cfg.validate()
    return cfg, set(set_kw)


FIELDS = tuple(f.name for f in fields(TrainConfig))
