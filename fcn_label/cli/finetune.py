"""`fcn-label finetune`: train or fine-tune an FCN on a labelled folder (logic in :mod:`fcn_label.train`).

The command line carries the options a run needs every time; every other
option is a key of a config file (``--config run.toml``, or the config.json a
run wrote) or of ``--set KEY=VALUE``. Precedence: the preset fills what nothing
else sets, then the file, then --set, then the flags.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..classes import read_class_file
from ..devices import dist_info
from ..train.config import CHOICES, DEFAULT_IGNORE, FIELDS, FLAGS, PRESETS, TrainConfig  # torch-free
from ..train.config import load_config
from rich.markup import escape

from ..storage import check_writable, is_url, shown_url
from ._common import app, choice, console, fail, staged, value

_DEFAULT = {f.name: f.default for f in fields(TrainConfig)}
_MODEL_OPTIONS = ("width", "fc_channels", "batch_norm", "padding", "dropout")
CONFIG_KEYS = tuple(k for k in FIELDS if k not in FLAGS)  # no flag: --config or --set only
DOCS = "docs/finetune-config.md"

Preset = choice("Preset", CHOICES["preset"])


def _d(name: str) -> str:
    """Help suffix: the TrainConfig default, or each preset's value."""
    if name in PRESETS["modern"]:
        return "(default: " + "; ".join(f"{p} preset {v[name]}" for p, v in PRESETS.items()) + ")"
    return f"(default: {_DEFAULT[name]})"


EPILOG = f"""\
[bold]Config keys[/] (in --config FILE or --set KEY=VALUE; each one's meaning and default: {DOCS})

  {", ".join(CONFIG_KEYS)}

[bold]Examples[/]

CamVid from its list files, starting from the shipped model (classes and ignore label come from --init):

  fcn-label finetune ../shared/data/camvid/train.txt --val ../shared/data/camvid/val.txt --init fcn8s-compact-camvid --epochs 12 --lr 5e-4 --set class_weights=none --out runs/camvid

The compact model from scratch, the rare options in a file (run.toml: val_every = 3, class_weights = "median", class_weight_power = 0.25):

  fcn-label finetune ../shared/data/camvid/train.txt --val ../shared/data/camvid/val.txt --ignore-index 11 --epochs 100 --config run.toml --out runs/camvid

Repeat a run with one change (the config.json a run writes is a config file; flags override it):

  fcn-label finetune --config runs/camvid/config.json --set criterion=lovasz --out runs/camvid-lovasz

The paper's staged recipe: FCN-32s from ImageNet VGG16, then 16s from 32s, then 8s from 16s:

  fcn-label finetune data/VOC --preset paper --set split=train --set arch=fcn32s --set init_backbone=imagenet --out runs/32s
  fcn-label finetune data/VOC --preset paper --set split=train --set arch=fcn16s --init runs/32s/best.pt --out runs/16s

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
    data: Optional[str] = typer.Argument(None, help="Training data: a VOC folder (JPEGImages/ + SegmentationClass/), "
                                         "a folder with images/ + masks/ (matched by relative name), a list file of "
                                         "'image mask' lines (paths relative to it), or a COCO instances .json "
                                         "(rasterised with pycocotools); a path or a URL (s3://bucket/camvid/train.txt). May come from "
                                         "--config instead."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=f"Options from a TOML file, or the config.json "
                                          f"a run wrote (a path or URL); keys as listed below ({DOCS}). Flags override it."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE: one config key (repeatable), e.g. "
                                             "--set class_weights=none --set crop=288x384; overrides --config."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data, any layout above; scored with pixel "
                                      "accuracy and mean IU after every val_every epochs. Without it no best.pt. May be a URL."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder: best.pt, last.pt, log.csv, log.json, "
                                      f"config.json. Nothing is written anywhere else. An object store URL (s3://bucket/runs/x) gets "
                                      "each checkpoint as it is saved, so --resume works from there. "
                                      f"(default: {_DEFAULT['out']})"),
    images: Optional[str] = typer.Option(None, "--images", help="COCO, Label Studio, CVAT or LabelMe data: "
                                         "the image folder, photos found by the mask's relative name (default: images/ "
                                         "beside a COCO JSON; the images the annotation files point to). May be a URL."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names (a file or URL), one per line in index order; "
                                           "'name r g b' lines also set the palette. (default: the dataset's "
                                           "categories, classes.txt in the dataset folder or beside the list file, "
                                           "--init's classes, or class_0..N)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", "-n", help="Number of classes (default: from "
                                              "--classes, the dataset's classes.txt, --init, or the largest mask "
                                              "label + 1)."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="Mask label left out of the loss and the "
                                               f"metrics: 255 for VOC, 11 for CamVid. (default: --init's, else "
                                               f"{DEFAULT_IGNORE})"),
    init: Optional[str] = typer.Option(None, "--init", help="Start from a model: an fcn-label checkpoint (path or URL), a shipped "
                                       "model name (see `fcn-label models`) or a pytorch-fcn .pth state dict. Its "
                                       "architecture, width, classes and ignore label are kept unless given; with "
                                       "another class count the score and upsampling layers are re-initialised."),
    preset: Optional[Preset] = typer.Option(None, "--preset", help=f"Training recipe: {', '.join(PRESETS)}. paper: "
                                            "the FCN paper (SGD, fixed lr, full VGG16); modern: AdamW, poly schedule, "
                                            "class weights, EMA, compact BN model. Options set anywhere else override "
                                            f"it. (default: {_DEFAULT['preset']})"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=f"Passes over the training data. {_d('epochs')}"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Crops per step (per process under "
                                             f"torchrun). {_d('batch_size')}"),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Base learning rate. {_d('lr')}"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA when available, one per torchrun "
                                         "process), cpu, cuda or cuda:N. (default: auto)"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (float16 autocast + loss "
                                       "scaling) on CUDA. (default: off)"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt: model, optimiser, "
                                "schedule, epoch and position in it, best score and logs."),
) -> None:
    """Train an FCN on your labelled images; the checkpoints work directly with predict and evaluate.

    Checks the data first (pairs found, class histogram, mask labels outside the classes, image/mask size
    mismatches, naming the files), then trains with random scale, crop, flip and colour jitter, validating
    and writing OUT/best.pt (best val mean IU) and OUT/last.pt (latest, resumable) atomically.
    """
    with staged() as st:
        _finetune(st, data, config, sets, val, out, images, classes, num_classes, ignore_index, init, preset, epochs,
                  batch_size, lr, device, amp, resume)


def _finetune(st, data, config, sets, val, out, images, classes, num_classes, ignore_index, init, preset, epochs,
              batch_size, lr, device, amp, resume) -> None:
    """The verb on local paths: URL arguments (also those a --config file names) are staged by ``st``;
    a remote --out is uploaded after every checkpoint save, so a killed run loses at most what a
    local run would, plus the upload in flight."""
    flags = dict(val=val, out=out, images=images, num_classes=num_classes, ignore_index=ignore_index, init=init,
                 preset=value(preset), epochs=epochs, batch_size=batch_size, lr=lr, device=device, amp=amp)
    if classes is not None:
        flags["classes"], flags["palette"] = read_class_file(st.input(classes, "--classes"))
    config = st.input(config, "--config")
    cfg, set_keys = load_config(data, config, sets or [], flags)
    if cfg.init is not None:
        ignored = [k for k in _MODEL_OPTIONS if k in set_keys]
        if ignored:
            console.print(f"[yellow]warning:[/] {', '.join(ignored)} ignored: --init fixes the model's shape")

    def staged_in(v, what: str, **kw):  # local values stay exactly as given (config.json records them)
        return str(st.input(v, what, **kw)) if v and is_url(v) else v

    cfg.data = staged_in(cfg.data, "DATA", images_beside=not cfg.images)
    cfg.val = staged_in(cfg.val, "--val", images_beside=not cfg.images)
    cfg.images = staged_in(cfg.images, "--images")
    cfg.init = staged_in(cfg.init, "--init")
    if is_url(cfg.out):  # refuse before downloading a run that is not to be used
        _check_run(check_writable(cfg.out, "--out").isfile("last.pt"), resume, shown_url(cfg.out))
        cfg.out = str(st.output(cfg.out, "--out"))
    _train(cfg, resume, st)


def _train(cfg, resume: bool, st) -> None:
    Trainer = globals().get("Trainer") or __getattr__("Trainer")  # noqa: N806  (tests replace the module's)

    last = Path(cfg.out) / "last.pt"
    _check_run(last.is_file(), resume, cfg.out)

    is_main = dist_info()[0] == 0
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not is_main) as bar:
        task = bar.add_task("train", total=None, epoch=0, loss=float("nan"))

        def progress(epoch: int, step: int, running_loss: float) -> None:
            bar.update(task, completed=step, total=trainer.total_steps, epoch=epoch + 1, loss=running_loss)

        trainer = Trainer(cfg, log=lambda m: bar.console.print(m, soft_wrap=True, markup=False), progress=progress)
        if st.root is not None:  # some argument is a URL
            trainer.recorded = st.shown
        if st.outputs:
            trainer.saved = lambda: _upload(st)
        try:
            trainer.run(resume=str(last) if resume else None)
        except KeyboardInterrupt:
            bar.stop()
            raise fail(f"interrupted: {last} holds the latest checkpoint; repeat the command with --resume to "
                       "continue", 130) from None
    if is_main:
        if st.outputs:
            st.sync()  # before the closing lines, which name where the model is
        best = Path(cfg.out) / "best.pt"
        model = best if best.is_file() else last
        score = f"best val mean IU {100 * trainer.best:.2f}; " if best.is_file() else ""
        console.print(f"done after {trainer.epoch} epochs / {trainer.step} steps: {score}model {model}\n"
                      f"label images: fcn-label predict IMAGES -o LABELS -w {model}", soft_wrap=True)


def _check_run(has_last: bool, resume: bool, out: str) -> None:
    """--resume needs a run in --out, and a new run never overwrites one."""
    last = f"{out}/last.pt" if is_url(out) else Path(out) / "last.pt"
    if resume and not has_last:
        raise fail(f"{last}: nothing to resume; drop --resume to start a new run in {out}")
    if not resume and has_last:
        raise fail(f"{last}: a run already exists there; add --resume to continue it, or choose another --out")


def _upload(st) -> None:
    """After a checkpoint save: put the run folder's new files up. A store that fails now is warned
    about and tried again at the next save; the last upload, at the end, must succeed."""
    from ..storage import StorageError

    try:
        st.sync()
    except StorageError as e:
        console.print(f"[yellow]warning:[/] {escape(str(e))}; trying again after the next checkpoint",
                      soft_wrap=True)
