"""`fcn-label evaluate`: score masks against ground truth (logic in :mod:`fcn_label.evaluate`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import evaluate as ev
from ..choices import CALIBRATED
from ..images import DEFAULT_MAX_PIXELS
from ..storage import is_url
from ._common import BACKEND_HELP, TTA, TTA_HELP, Backend, app, choice, console, fail, staged, tta_settings, value

Format = choice("Format", ("table", "json"))

stdout = Console(highlight=False)


def _f(v: float, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{100 * v:.2f}" if pct else f"{v:.4f}"


def _show(res: ev.EvalResult) -> None:
    t = Table(title="per class (%)", title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("#", "right"), ("class", "left"), ("IoU", "right"), ("accuracy", "right"),
                      ("precision", "right"), ("GT pixels", "right"), ("predicted", "right")):
        t.add_column(col, justify=just)
    s = res.scores
    for i, name in enumerate(res.class_names):
        absent = math.isnan(s.iou[i])
        t.add_row(str(i), name + (" [dim](absent)[/]" if absent else ""), _f(s.iou[i]), _f(s.accuracy[i]),
                  _f(s.precision[i]), f"{s.support[i]:,}", f"{s.predicted[i]:,}")
    stdout.print(t)
    summ = Table(title="dataset (pooled confusion matrix, %)", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("pixel acc", "mean acc", "mean IoU", "f.w. IoU", "images", "pixels scored"):
        summ.add_column(col, justify="right")
    summ.add_row(_f(s.pixel_accuracy), _f(s.mean_accuracy), _f(s.mean_iou), _f(s.fw_iou),
                 f"{res.n_evaluated:,}", f"{int(res.conf.sum()):,}")
    stdout.print(summ)
    if res.absent_classes:
        stdout.print(f"absent from ground truth and prediction (NaN, left out of the means): "
                     f"{', '.join(res.absent_classes)}")


@app.command("evaluate")
def evaluate(
    gt: str = typer.Option(..., "--gt", "-g", help="Ground truth (a path or URL): a folder of index masks (PNG, 'P' or 'L'), a VOC "
                            "root (SegmentationClass/), a folder with images/ + masks/, a list file of 'image mask' "
                            "lines (e.g. CamVid val.txt) or a COCO instances JSON (rasterised: background 0, "
                            "categories by ascending id 1..K, iscrowd = ignore, later annotations on top)."),
    pred: Optional[str] = typer.Option(None, "--pred", "-p", help="Predictions: a folder of index masks (e.g. what "
                                        "`fcn-label predict` wrote) or a COCO JSON (predict's predictions.json, or "
                                        "another tool's results list with RLE/polygons). Matched to --gt by relative "
                                        "path without suffix. A URL is downloaded whole first."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Instead of --pred: predict with this "
                                          "checkpoint (file, URL or shipped model name) and evaluate in one go."),
    images: Optional[str] = typer.Option(None, "--images", "-i", help="Image folder, matched to the ground truth "
                                          "by name: the input for --weights, and the left column of worst_images.png. "
                                          "Default: the images of a VOC / images+masks / list / COCO ground truth. May be a URL."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Report folder for summary.csv, per_class.csv, "
                                       "per_image.csv, confusion_matrix.csv/.png, worst_images.png and failures.csv. "
                                       "Nothing is written anywhere else; without it only the terminal report. An object store URL "
                                       "(s3://bucket/report) gets the files when the run ends."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", "-n", min=1, max=256, help="Number of classes. "
                                              "Default: from --classes, the --weights model, a COCO ground truth's "
                                              "categories, a classes.txt beside --gt, or a prediction JSON's categories."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Text file of class names, one per line in index "
                                           "order ('name' or 'name r g b'; e.g. camvid/classes.txt); sets "
                                           "--num-classes; may be a URL. Default: classes.txt beside --gt when there is one."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", min=0, max=255, help="Ground-truth label "
                                               "left out of all figures: 255 for VOC (default), 11 for CamVid; "
                                               "with --weights the model's. Ground-truth values >= --num-classes "
                                               "are left out too (and counted in the summary)."),
    split: Optional[str] = typer.Option(None, "--split", help="VOC root only: the ImageSets/Segmentation/<split>.txt "
                                        "list to evaluate (default: every mask in SegmentationClass/)."),
    workers: int = typer.Option(2, "--workers", "-j", min=1, max=64, help="Threads decoding and scoring mask pairs "
                                "in parallel."),
    worst: int = typer.Option(8, "--worst", min=0, max=100, help="How many lowest-mean-IoU images to show in "
                              "worst_images.png (0: none)."),
    fmt: Format = typer.Option("table", "--format", "-f", help="Terminal output: table (rich tables) or json (one JSON "
                            "document on stdout: summary, per-class figures, absent classes, failures)."),
    device: str = typer.Option("auto", help="With --weights: auto (CUDA when available, else CPU), cpu or cuda:N."),
    tta: TTA = typer.Option("none", "--tta", help="With --weights: " + TTA_HELP),
    flip: bool = typer.Option(False, "--flip", help="With --weights: the same as --tta flip."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse masks (and, with "
                                   "--weights, images) larger than this, from the header (decompression-bomb guard)."),
    backend: Backend = typer.Option("eager", help="With --weights: " + BACKEND_HELP),
    calib: Optional[str] = typer.Option(None, help="With --weights and --backend ort-int8 (then required): "
                                         "calibrate on these images, e.g. the training list camvid/train.txt (a "
                                         "folder, or a list file of images or 'image mask' lines). evaluate never "
                                         "calibrates on the images it scores; may be a URL. Nothing is cached; temporary files "
                                         "go inside --out when given."),
    calib_count: int = typer.Option(32, min=1, help="How many --calib images calibration reads (spread evenly)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score predicted masks against ground truth with the FCN paper's metrics.

    Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU come from one confusion matrix pooled over all pixels of all images (as published tables report them), not from averaging per-image numbers; per-image figures are in per_image.csv.

    Ground-truth pixels equal to --ignore-index or outside 0..N-1 are left out. A class absent from both ground truth and prediction has no IoU (NaN), is left out of the means, and is named in the report.

    Unreadable masks, size mismatches and class indices >= N are reported per file (failures.csv) and the rest is evaluated. Exit status: 0 when every ground-truth image was scored, 1 when some were not, 2 for unusable arguments.

    Examples:

      fcn-label evaluate --pred masks/ --gt camvid/val.txt --ignore-index 11 --out report/

      fcn-label evaluate --weights fcn8s-compact-camvid --gt camvid/val.txt --out report/
    """
    with staged() as st:
        _evaluate(st, gt, pred, weights, images, out, num_classes, classes, ignore_index, split, workers, worst, fmt,
                  device, tta, flip, max_pixels, backend, calib, calib_count, quiet)


def _evaluate(st, gt, pred, weights, images, out, num_classes, classes, ignore_index, split, workers, worst, fmt,
              device, tta, flip, max_pixels, backend, calib, calib_count, quiet) -> None:
    """The verb on local paths: each URL argument is staged by ``st`` (see fcn_label.staging)."""
    fmt = fmt.value
    if (pred is None) == (weights is None):
        raise fail("give exactly one of --pred (masks or COCO JSON to score) and --weights (predict, then score)")
    if out is not None and not is_url(out) and Path(out).exists() and not Path(out).is_dir():
        raise fail(f"--out {out}: exists and is not a folder; give a folder for the report")
    tta_flip, tta_scales = tta_settings(tta, flip)
    if (tta_flip or tta_scales != (1.0,)) and weights is None:
        raise fail("--tta and --flip change how a model predicts: use them with --weights (or predict --tta, "
                   "then --pred)")
    kind = value(backend)
    if kind != "eager" and weights is None:
        raise fail("--backend chooses how a model predicts: use it with --weights (or predict --backend, then --pred)")
    if kind in CALIBRATED and calib is None:
        raise fail(f"--backend {kind} calibrates on sample images: give --calib (e.g. the training list, "
                   "camvid/train.txt); evaluate does not calibrate on the images it scores")
    gt = st.input(gt, "--gt", images_beside=images is None and (weights is not None or out is not None))
    pred = st.input(pred, "--pred")
    images = st.input(images, "--images")
    classes = st.input(classes, "--classes")
    calib = st.input(calib, "--calib")
    if weights is not None and is_url(weights):
        weights = str(st.input(weights, "--weights"))
    out = st.output(out, "--out")
    if out is not None and out.exists() and not out.is_dir():
        raise fail(f"--out {out}: exists and is not a folder; give a folder for the report")
    ck = None
    if weights is not None:
        from ..checkpoint import load_checkpoint, resolve_weights

        ck = load_checkpoint(resolve_weights(weights))
    ignore = ignore_index if ignore_index is not None else (ck.ignore_index if ck is not None else 255)
    truth = ev.GroundTruth(gt, images=images, split=split, ignore_index=ignore)
    truth.max_pixels = max_pixels
    spec = ev.resolve_classes(num_classes, classes, ck, truth, pred)
    n, names = spec.num, spec.names
    if ck is not None:
        from ..predict import Predictor

        from .predict import calibration_images

        calib_arrays = calibration_images(kind, calib, calib_count, [], "")
        predictor = Predictor(ck, device=device, flip=tta_flip, scales=tta_scales, backend=kind, calib=calib_arrays,
                              workdir=out if kind != "eager" else None)
        source = ev.ModelPredictions(predictor, {k: it.image for k, it in truth.items.items() if it.image is not None})
        if not source.images:
            raise fail(f"--gt {gt}: no images to predict on; give the image folder with --images")
    else:
        source = ev.open_predictions(pred, truth, n, names, report_dir=out)
    source.max_pixels = max_pixels

    if fmt == "table":
        console.print(f"evaluate: {len(truth.items)} ground-truth masks ({truth.layout}), "
                      f"{len(source.keys())} predictions, {n} classes (from {spec.source}), ignore label {ignore}")
    progress = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet, transient=True)
    task = progress.add_task("evaluate", total=None)
    with progress:
        res = ev.evaluate(truth, source, n, names, ignore, workers=workers, worst_k=worst if out else 0,
                          progress=lambda i, total: progress.update(task, completed=i, total=total))
    if out is not None:
        ev.write_report(res, out, palette=spec.palette)

    if fmt == "json":
        d = res.to_dict()
        d["report_dir"] = str(out) if out else None
        stdout.print_json(st.shown(json.dumps(d, allow_nan=False)))  # failures name URLs, not the local copies
    else:
        _show(res)
    for f in res.failures[:10]:
        console.print(f"[yellow]{f.kind}:[/] {escape(f.message)}", soft_wrap=True)
    if len(res.failures) > 10:
        console.print(f"... and {len(res.failures) - 10} more" + (f" in {out / 'failures.csv'}" if out else ""))
    if res.pixels_gt_out_of_range:
        console.print(f"[yellow]note:[/] {res.pixels_gt_out_of_range:,} ground-truth pixels have labels >= {n} "
                      f"(not the ignore label {ignore}) and were left out; if that is your ignore label, pass "
                      "--ignore-index, or check --num-classes")
    if res.n_evaluated == 0:
        raise fail("no image could be evaluated; see the messages above")
    console.print(f"{res.n_evaluated} images scored in {res.seconds:.1f}s"
                  + (f"; report in {out}" if out else "; add --out DIR for CSV reports and pictures"))
    if not res.complete:
        raise typer.Exit(1)
