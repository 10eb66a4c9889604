"""Everything a training run is handed: data, classes, model, optimiser, class weights.

:func:`build` reads the data once (scanning every mask for its labels), names
the classes from the options and the candidate sources of the data
(:mod:`fcn_label.classes`), builds the
model (from --init, --init-backbone or fresh) and its optimiser; the
:class:`~fcn_label.train.loop.Trainer` only runs the loop over them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import IMAGENET, Checkpoint, Normalization, WeightsError, load_checkpoint, resolve_weights
from ..classes import (choose_classes, class_file_beside, dataset_categories, explicit_classes, model_classes,
                       resolve_palette, voc_classes, voc_palette)
from ..datasets import CocoRasteriser, detect_layout, load_pairs
from ..images import InputError
from ..model import FCN, FCNConfig
from .augment import Augment
from .backbone import backbone_file, backbone_state
from .config import DEFAULT_IGNORE, TrainConfig
from .data import SegmentationDataset, check_labels, drop_bad, median_frequency_weights, scan_masks


@dataclass
class Parts:
    """What the loop is handed."""

    train_ds: SegmentationDataset
    val_ds: SegmentationDataset | None
    classes: list[str]
    palette: list[tuple[int, int, int]]
    class_counts: np.ndarray
    norm: Normalization
    model: FCN
    optimizer: torch.optim.Optimizer
    class_weight: torch.Tensor | None


def _load_split(cfg: TrainConfig, source: str, split: str | None, log) -> tuple[list, CocoRasteriser | None]:
    pairs, problems, coco = load_pairs(Path(source), Path(cfg.images) if cfg.images else None, split, cfg.ignore_index)
    for p in problems[:20]:
        log(f"warning: {p}")
    if len(problems) > 20:
        log(f"warning: ... and {len(problems) - 20} more unmatched entries")
    if not pairs:
        raise InputError(f"{source}: no (image, mask) pairs found; check the layout (see `fcn-label finetune --help`)")
    return pairs, coco


def datasets(cfg: TrainConfig, log) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    pairs, coco = _load_split(cfg, cfg.data, cfg.split, log)
    aug = Augment(crop=tuple(cfg.crop), scale=tuple(cfg.scale), flip=cfg.hflip, jitter=cfg.jitter, blur_p=cfg.blur_p,
                  ignore_index=cfg.ignore_index)
    train_ds = SegmentationDataset(pairs, aug, cache=cfg.cache, coco=coco, seed=cfg.seed)
    val_ds = None
    if cfg.val:
        vpairs, vcoco = _load_split(cfg, cfg.val, cfg.val_split, log)
        val_ds = SegmentationDataset(vpairs, None, cache=cfg.cache, coco=vcoco)
    return train_ds, val_ds


def classes(cfg: TrainConfig, train_ds: SegmentationDataset, init: Checkpoint | None, counts: np.ndarray, log):
    """Names and colours: the options, else the data's own names, --init's, VOC's; the labels decide N last."""
    labels = [int(v) for v in np.nonzero(counts)[0] if v != cfg.ignore_index]
    if not cfg.classes and not cfg.num_classes and init is None and not labels:
        raise InputError(f"{cfg.data}: every mask pixel is the ignore label {cfg.ignore_index}; check --ignore-index")
    coco = train_ds.coco
    count = cfg.num_classes or (max(labels) + 1 if labels else None)
    candidates = [dataset_categories(coco.class_names if coco else None, cfg.data), class_file_beside(cfg.data),
                  model_classes(init), voc_classes(detect_layout(Path(cfg.data)), cfg.data, count)]
    spec = choose_classes(explicit_classes(cfg.num_classes, names=cfg.classes), candidates,
                          num_classes=cfg.num_classes, labels=labels, log=log)
    resolve_palette(spec, cfg.palette, init=init, first_mask=train_ds.pairs[0].mask)
    names = spec.names
    pal = spec.palette or voc_palette()
    if len(pal) < len(names):
        raise InputError(f"the palette has {len(pal)} colours for {len(names)} classes; give one 'name r g b' line per class")
    return names, [tuple(c) for c in pal[: len(names)]]


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
                               "the checkpoint's width/fc size must match (drop width/fc_channels with --init)")
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


def param_groups(model: FCN, cfg: TrainConfig) -> list[dict]:
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


def build_optimizer(model: FCN, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def class_weights(cfg: TrainConfig, counts: np.ndarray, names: list[str], device: torch.device, log):
    if cfg.class_weights == "none":
        return None
    w = median_frequency_weights(counts)
    if cfg.class_weights == "sqrt-median":
        w = np.sqrt(w)
    if cfg.class_weight_power != 1:
        w = w ** cfg.class_weight_power
    log("class weights: " + ", ".join(f"{names[i]} {x:.2f}" for i, x in enumerate(w)))
    return torch.tensor(w, dtype=torch.float32, device=device)


def build(cfg: TrainConfig, device: torch.device, log: Callable[[str], None] = print) -> Parts:
    """Data, classes, model and optimiser for ``cfg``; records the model actually trained into ``cfg``."""
    backbone = backbone_file(cfg.init_backbone) if cfg.init_backbone else None  # before the long data scan
    init = load_checkpoint(resolve_weights(cfg.init)) if cfg.init else None
    if cfg.ignore_index is None:  # the data is read with it, so it is settled first
        cfg.ignore_index = init.ignore_index if init is not None else DEFAULT_IGNORE
        if init is not None:
            log(f"ignore label {cfg.ignore_index} (from --init; --ignore-index overrides)")
    train_ds, val_ds = datasets(cfg, log)
    counts, present, bad = scan_masks(train_ds)
    if len(bad) == len(train_ds):  # nothing readable: say so before guessing classes from nothing
        drop_bad([("train", train_ds, bad)], cfg.skip_bad, log)
    names, palette = classes(cfg, train_ds, init, counts, log)
    n = len(names)
    bad += check_labels(train_ds, present, n, cfg.ignore_index)
    dropped = {i for i, _ in bad}
    counts = counts - sum((c for i, _, c in present if i in dropped), np.zeros(256, np.int64))
    val_bad = []
    if val_ds is not None:
        _, val_present, val_bad = scan_masks(val_ds)
        val_bad += check_labels(val_ds, val_present, n, cfg.ignore_index)
    drop_bad([("train", train_ds, bad), ("val", val_ds, val_bad)], cfg.skip_bad, log)
    counts = counts[:n]
    log(f"train: {len(train_ds)} pairs" + (f", val: {len(val_ds)} pairs" if val_ds else "")
        + f", {n} classes; pixel share "
        + ", ".join(f"{names[i]} {100 * c / max(1, counts.sum()):.1f}%" for i, c in enumerate(counts)))
    missing = [names[i] for i in range(n) if counts[i] == 0]
    if missing:
        log(f"warning: no training pixels of {', '.join(missing)}; the model cannot learn them")

    if init is not None:
        model_cfg = replace(init.config, arch=cfg.arch or init.config.arch, num_classes=n)
        norm = init.normalization
    else:
        model_cfg = FCNConfig(arch=cfg.arch or "fcn8s", num_classes=n, width=cfg.width,
                              fc_channels=cfg.fc_channels, batch_norm=cfg.batch_norm, padding=cfg.padding,
                              dropout=cfg.dropout)
        norm = IMAGENET
    model = FCN(model_cfg)
    for k in ("arch", "width", "fc_channels", "batch_norm", "padding", "dropout"):
        setattr(cfg, k, getattr(model_cfg, k))  # record the model actually trained (--init fixes its shape)
    if init is not None:
        log(transfer_weights(model, init, cfg.init))
    elif backbone is not None:
        model.load_state_dict(backbone_state(backbone, model_cfg), strict=False)
        log(f"init: VGG16 backbone and fc6/fc7 from {backbone}; score layers zero")
    elif cfg.preset == "paper":
        log("warning: the paper preset fine-tunes ImageNet VGG16; from scratch (no init_backbone) "
            "it converges slowly")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    weight = class_weights(cfg, counts, names, device, log)
    return Parts(train_ds, val_ds, names, palette, counts, norm, model, optimizer, weight)
