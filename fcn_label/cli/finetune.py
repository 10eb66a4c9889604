"""`fcn-label finetune`: train or fine-tune an FCN on a labelled folder (logic in :mod:`fcn_label.train`).

Options left at their defaults are filled by ``--preset``; only options given on
the command line override it, so the command maps one-to-one onto
:class:`~fcn_label.train.TrainConfig` and ``apply_preset``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..classes import read_class_file
from ..devices import dist_info
from ..train.config import CHOICES, PAPER_SUM_LOSS, PRESETS, VGG16_MODEL, TrainConfig  # torch-free
from ._common import app, choice, console, fail, value

_DEFAULT = {f.name: f.default for f in fields(TrainConfig)}
_MODEL_OPTIONS = ("width", "fc_channels", "batch_norm", "padding", "dropout")
# CLI parameter -> TrainConfig field where the names differ
_FIELD = {"checkpoint_every": "checkpoint_every_steps"}


def _d(name: str) -> str:
    """Help suffix: the TrainConfig default, or each preset's value."""
    if name in PRESETS["modern"]:
        return "(default: " + "; ".join(f"{p} preset {v[name]}" for p, v in PRESETS.items()) + ")"
    v = _DEFAULT[name]
    return f"(default: {v})"


def _choices(name: str) -> str:
    return ", ".join(CHOICES[name])


Preset, Arch, Padding, Optimizer, Schedule, ClassWeights, Loss = (
    choice(n, CHOICES[k]) for n, k in (("Preset", "preset"), ("Arch", "arch"), ("Padding", "padding"),
                                       ("Optimizer", "optimizer"), ("Schedule", "schedule"),
                                       ("ClassWeights", "class_weights"), ("Loss", "loss")))


def _pair(text: str, sep: str, cast, option: str, example: str) -> tuple:
    try:
        a, b = (cast(v) for v in text.lower().split(sep))
    except ValueError:
        raise fail(f"{option} {text!r}: expected two numbers like {example}") from None
    return a, b


EPILOG = """\
[bold]Examples[/]

CamVid (list files; classes.txt beside them names the 11 classes; label 11 is void), the compact model from scratch:

  fcn-label finetune ../shared/data/camvid/train.txt --val ../shared/data/camvid/val.txt --num-classes 11 --ignore-index 11 --epochs 100 --val-every 3 --out runs/camvid

A VOC-style folder (JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/), starting from a shipped model:

  fcn-label finetune data/VOC --split train --val data/VOC --val-split val --init fcn8s-compact-camvid --epochs 30 --out runs/voc

The paper's staged recipe: FCN-32s from ImageNet VGG16, then 16s from 32s, then 8s from 16s:

  fcn-label finetune data/VOC --split train --preset paper --arch fcn32s --init-backbone vgg16-397923af.pth --out runs/32s
  fcn-label finetune data/VOC --split train --preset paper --arch fcn16s --init runs/32s/best.pt --out runs/16s

Several GPUs or processes (DistributedDataParallel; --batch-size is per process):

  torchrun --standalone --nproc-per-node 4 --no-python fcn-label finetune ...

Resume a stopped or killed run: repeat the same command with --resume.
Use the result: fcn-label predict IMAGES -o LABELS -w OUT/best.pt; fcn-label evaluate --gt VAL -w OUT/best.pt.
"""


def __getattr__(name: str):
    """``Trainer`` on first use (importing it imports torch); a module attribute so tests can replace it."""
    if name == "Trainer":
        from ..train import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@app.command("finetune", epilog=EPILOG)
def finetune(
    ctx: typer.Context,
    data: str = typer.Argument(..., help="Training data: a VOC folder (JPEGImages/ + SegmentationClass/), a folder "
                               "with images/ + masks/ (matched by relative name), a list file of 'image mask' lines "
                               "(paths relative to it), or a COCO instances .json (rasterised with pycocotools)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data, any layout above; scored with pixel "
                                      "accuracy and mean IU after every --val-every epochs. Without it no best.pt."),
    out: str = typer.Option(_DEFAULT["out"], "--out", "-o", help="Run folder: best.pt, last.pt, log.csv, log.json, "
                            "config.json. Nothing is written anywhere else."),
    images: Optional[str] = typer.Option(None, "--images", help="COCO, Label Studio, CVAT or LabelMe data: "
                                         "the image folder, photos found by the mask's relative name (default: images/ "
                                         "beside a COCO JSON; the images the annotation files point to)."),
    split: Optional[str] = typer.Option(None, "--split", help="VOC only: use ImageSets/Segmentation/SPLIT.txt "
                                        "(default: every mask in SegmentationClass/)."),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="VOC only: the split of --val."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class names, one per line in index order; "
                                           "'name r g b' lines also set the palette. (default: classes.txt in the "
                                           "dataset folder or beside the list file, the COCO categories, or "
                                           "class_0..N)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", "-n", help="Number of classes (default: from "
                                              "--classes, the dataset's classes.txt, --init, or the largest mask "
                                              "label + 1)."),
    ignore_index: int = typer.Option(_DEFAULT["ignore_index"], "--ignore-index", help="Mask label left out of the "
                                     "loss and the metrics: 255 for VOC, 11 for CamVid."),
    arch: Optional[Arch] = typer.Option(None, "--arch", help=f"{_choices('arch')} (default: fcn8s, or --init's "
                                       "architecture). A finer one than --init's (32s -> 16s -> 8s) stages training: "
                                       "shared layers are kept, new skip scorers start at zero."),
    width: Optional[float] = typer.Option(None, "--width", help=f"Channel multiplier of VGG16 (1 = the paper's). "
                                          f"{_d('width')}"),
    fc_channels: Optional[int] = typer.Option(None, "--fc-channels", help=f"Width of fc6/fc7. {_d('fc_channels')}"),
    batch_norm: Optional[bool] = typer.Option(None, "--batch-norm/--no-batch-norm", help="BatchNorm after every "
                                              f"convolution. {_d('batch_norm')}"),
    padding: Optional[Padding] = typer.Option(None, "--padding", help="caffe (pad 100, the reference net) or same "
                                          f"(pad to a multiple of 32: half the compute). {_d('padding')}"),
    dropout: Optional[float] = typer.Option(None, "--dropout", help=f"Dropout after fc6/fc7. {_d('dropout')}"),
    init: Optional[str] = typer.Option(None, "--init", help="Start from a model: an fcn-label checkpoint, a shipped "
                                       "model name (see `fcn-label models`) or a pytorch-fcn .pth state dict. Its "
                                       "architecture and width are kept; with another class count the score and "
                                       "upsampling layers are re-initialised."),
    init_backbone: Optional[str] = typer.Option(None, "--init-backbone", help="Start from VGG16 ImageNet weights: "
                                                "'imagenet' (torchvision's VGG16_Weights.IMAGENET1K_V1, from "
                                                "TORCH_HOME's cache, downloaded when online) or a torchvision VGG16 "
                                                "state dict file (vgg16-397923af.pth): conv layers and fc6/fc7; implies "
                                                f"the full model ({', '.join(f'{k} {v}' for k, v in VGG16_MODEL.items())})."),
    preset: Preset = typer.Option(_DEFAULT["preset"], "--preset", help=f"Training recipe: {_choices('preset')}. paper: "
                               "the FCN paper (SGD, fixed lr, full VGG16); modern: AdamW, poly schedule, class "
                               "weights, EMA, compact BN model. Options given explicitly override it."),
    optimizer: Optional[Optimizer] = typer.Option(None, "--optimizer", help=f"{_choices('optimizer')}. {_d('optimizer')}"),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Base learning rate. {_d('lr')}; paper with --loss sum: "
                                       f"{PAPER_SUM_LOSS['lr']}"),
    momentum: Optional[float] = typer.Option(None, "--momentum", help=f"SGD momentum. {_d('momentum')}; paper with "
                                             f"--loss sum: {PAPER_SUM_LOSS['momentum']}"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (never on biases and "
                                                 f"norms). {_d('weight_decay')}"),
    schedule: Optional[Schedule] = typer.Option(None, "--schedule", help=f"lr schedule: {_choices('schedule')}. "
                                           f"{_d('schedule')}"),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="Linear lr warm-up (poly/cosine). "
                                                f"{_d('warmup_epochs')}"),
    bias_lr_mult: Optional[float] = typer.Option(None, "--bias-lr-mult", help=f"lr multiplier of biases. "
                                                 f"{_d('bias_lr_mult')}"),
    freeze_upsampling: Optional[bool] = typer.Option(None, "--freeze-upsampling/--train-upsampling", help="Keep the "
                                                     "final upsampling fixed bilinear, as the paper does (intermediate "
                                                     f"ones always learn). {_d('freeze_upsampling')}"),
    class_weights: Optional[ClassWeights] = typer.Option(None, "--class-weights", help=f"Loss weights per class: "
                                                f"{_choices('class_weights')} (median frequency balancing, or its "
                                                f"square root). {_d('class_weights')}"),
    ema: Optional[float] = typer.Option(None, "--ema", help="Decay of the weight average that is validated and saved "
                                        f"(0 = off). {_d('ema')}"),
    loss: Loss = typer.Option(_DEFAULT["loss"], "--loss", help=f"Per-pixel multinomial logistic loss: "
                             f"{_choices('loss')} over valid pixels (sum = the paper's unnormalised loss)."),
    epochs: int = typer.Option(_DEFAULT["epochs"], "--epochs", help="Passes over the training data."),
    batch_size: int = typer.Option(_DEFAULT["batch_size"], "--batch-size", "-b", help="Crops per step (per process "
                                   "under torchrun)."),
    accumulate: int = typer.Option(_DEFAULT["accumulate"], "--accumulate", help="Add up gradients over this many "
                                   "batches per optimiser step (effective batch = batch x accumulate x processes)."),
    crop: str = typer.Option("x".join(map(str, _DEFAULT["crop"])), "--crop", help="Training crop HxW; smaller "
                             "images are padded (image with the mean, mask with --ignore-index)."),
    scale: str = typer.Option(",".join(map(str, _DEFAULT["scale"])), "--scale", help="Random rescale range MIN,MAX "
                              "before cropping (1,1 = none). Flip and colour jitter are always on."),
    val_every: int = typer.Option(_DEFAULT["val_every"], "--val-every", help="Validate every N epochs (and after "
                                  "the last)."),
    val_every_steps: int = typer.Option(_DEFAULT["val_every_steps"], "--val-every-steps", help="Also validate (and "
                                        "save) every N optimiser steps inside an epoch; 0 = off."),
    checkpoint_every: int = typer.Option(_DEFAULT["checkpoint_every_steps"], "--checkpoint-every", help="Also write "
                                         "last.pt every N optimiser steps inside an epoch, so a killed run loses at "
                                         "most N steps; 0 = at epoch ends only."),
    save_every: int = typer.Option(_DEFAULT["save_every"], "--save-every", help="Write last.pt every N epochs (and "
                                   "after each validation and at the end); raise it when an epoch is short next to "
                                   "writing the checkpoint, as for full VGG16 on a GPU. A stop loses at most N-1 epochs."),
    workers: int = typer.Option(_DEFAULT["workers"], "--workers", "-j", help="Data loading processes (0 = in the "
                                "training process)."),
    seed: int = typer.Option(_DEFAULT["seed"], "--seed", help="Seed of initialisation, sample order, augmentation "
                             "and dropout."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic kernels only (slower on "
                                       "CUDA); CPU runs are already repeatable with the same --threads."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (float16 autocast + loss scaling) on CUDA."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory layout (faster on tensor cores)."),
    device: str = typer.Option(_DEFAULT["device"], "--device", help="auto (CUDA when available, one per torchrun "
                               "process), cpu, cuda or cuda:N."),
    cache: bool = typer.Option(_DEFAULT["cache"], "--cache/--no-cache", help="Keep decoded images in memory."),
    max_steps: int = typer.Option(0, "--max-steps", help="Stop after this many optimiser steps in all (smoke runs); "
                                  "0 = run all epochs. The lr schedule still spans --epochs."),
    threads: int = typer.Option(0, "--threads", help="CPU threads per process (0 = torch's default)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out image/mask pairs that cannot be used "
                                  "(each is listed) and train on the rest; without it the data check stops there."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt: model, optimiser, "
                                "schedule, epoch and position in it, best score and logs."),
) -> None:
    """Train an FCN on your labelled images; the checkpoints work directly with predict and evaluate.

    Checks the data first (pairs found, class histogram, mask labels outside the classes, image/mask size
    mismatches, naming the files), then trains with random scale, crop, flip and colour jitter, validating
    and writing OUT/best.pt (best val mean IU) and OUT/last.pt (latest, resumable) atomically.
    """
    Trainer = globals().get("Trainer") or __getattr__("Trainer")  # noqa: N806  (tests replace the module's)

    # explicit = typed on the command line (or from the environment), not a default; by name
    # so it holds for click's ParameterSource and the copy Typer vendors
    given = {k for k in ctx.params if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    params = dict(ctx.params)
    kw = {_FIELD.get(k, k): value(params[k]) for k in given if k not in ("data", "classes", "crop", "scale", "resume")}
    if "crop" in given:
        kw["crop"] = _pair(crop, "x", int, "--crop", "288x384")
    if "scale" in given:
        kw["scale"] = _pair(scale, ",", float, "--scale", "0.5,2.0")
    if classes is not None:
        kw["classes"], kw["palette"] = read_class_file(classes)
    if init is not None:
        ignored = [f"--{k.replace('_', '-')}" for k in _MODEL_OPTIONS if k in given]
        if ignored:
            console.print(f"[yellow]warning:[/] {', '.join(ignored)} ignored: --init fixes the model's shape")
    cfg = TrainConfig(data=data, **kw)
    cfg.apply_preset(set(kw))
    cfg.validate()

    last = Path(cfg.out) / "last.pt"
    if resume and not last.is_file():
        raise fail(f"{last}: nothing to resume; drop --resume to start a new run in {cfg.out}")
    if not resume and last.is_file():
        raise fail(f"{last}: a run already exists there; add --resume to continue it, or choose another --out")

    is_main = dist_info()[0] == 0
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not is_main) as bar:
        task = bar.add_task("train", total=None, epoch=0, loss=float("nan"))

        def progress(epoch: int, step: int, running_loss: float) -> None:
            bar.update(task, completed=step, total=trainer.total_steps, epoch=epoch + 1, loss=running_loss)

        trainer = Trainer(cfg, log=lambda m: bar.console.print(m, soft_wrap=True, markup=False), progress=progress)
        try:
            trainer.run(resume=str(last) if resume else None)
        except KeyboardInterrupt:
            bar.stop()
            raise fail(f"interrupted: {last} holds the latest checkpoint; repeat the command with --resume to "
                       "continue", 130) from None
    if is_main:
        best = Path(cfg.out) / "best.pt"
        model = best if best.is_file() else last
        score = f"best val mean IU {100 * trainer.best:.2f}; " if best.is_file() else ""
        console.print(f"done after {trainer.epoch} epochs / {trainer.step} steps: {score}model {model}\n"
                      f"label images: fcn-label predict IMAGES -o LABELS -w {model}", soft_wrap=True)
