"""`fcn-label predict`: label folders of images with an FCN."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..choices import DEFAULT_WEIGHTS
from ..images import DEFAULT_MAX_PIXELS
from ..predict import OutputLayout, Palette, discover, shard_from_env  # torch-free parts; the rest when run
from ..predict.parallel import PARALLEL_HELP, parse_parallel
from ._common import BACKEND_HELP, TTA, TTA_HELP, Backend, app, choice, console, fail, tta_settings, value

Engine = choice("Engine", ("local", "ray"))
ENGINE_HELP = ("Where the images are predicted. local: this machine's processes (default). ray: a Ray cluster "
               "(--ray-address, else RAY_ADDRESS, else a Ray started for this run on this machine): with GPUs, a Ray "
               "Data pipeline of decode tasks, GPU actors and write tasks; on CPUs only, actors that each decode, "
               "predict and write. The same files as local. Every node needs fcn-label installed and the inputs and "
               "--out at the same paths (a shared folder) or in an object store. Needs pip install \"fcn-label[ray]\".")
RAY_ADDRESS_HELP = ("With --engine ray: the cluster's head node, HOST:PORT as `ray start --head` prints it (or ray://... "
                    "for Ray Client); default: the RAY_ADDRESS environment variable, else a Ray started for this run.")


def _parse_shard(s: str | None) -> tuple[int, int]:
    if not s:
        return shard_from_env()
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise fail(f"--shard {s!r}: expected I/N, e.g. 0/4 for the first of four parts") from None
    if n < 1 or not 0 <= i < n:
        raise fail(f"--shard {s}: I must be in 0..N-1")
    return i, n


def calibration_images(backend: str, calib: Path | None, count: int, own: list, own_desc: str) -> list:
    """RGB arrays for an int8 backend's calibration (none for the others), saying where they came from."""
    from ..predict.backends import CALIBRATED, list_calibration_images, load_calibration

    if backend not in CALIBRATED:
        if calib is not None:
            console.print(f"[yellow]note:[/] --calib only applies to --backend {' / '.join(CALIBRATED)}; ignored")
        return []
    paths = list_calibration_images(calib) if calib is not None else own
    arrays, skipped = load_calibration(paths, count)
    for reason in skipped[:3]:
        console.print(f"[yellow]calibration:[/] {escape(reason)}", soft_wrap=True)
    if not arrays:
        raise fail(f"--backend {backend}: no usable calibration image in {calib or 'the inputs'}; give --calib "
                   "a folder or list file of ordinary images")
    where = f"--calib {calib}" if calib is not None else own_desc
    console.print(escape(f"calibrating {backend} on {len(arrays)} images {where}"
                         if calib is None else f"calibrating {backend} on {len(arrays)} images from {where}"),
                  soft_wrap=True)
    return arrays


_WORKDIRS: list = []


def _backend_workdir(out, remote: bool) -> Path:
    """Where a --backend build keeps its temporary files: inside a local --out; for an object-store --out,
    a temporary folder of this machine (removed at exit), since the build needs real files."""
    if not remote:
        return OutputLayout(out).state
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="fcn-label-backend-")
    _WORKDIRS.append(tmp)  # kept until the process ends, then removed
    return Path(tmp.name)


def _ray_settings(engine: str, address: str | None, device: str, amp: bool, parallel: str | None, gpu_jpeg: bool,
                  backend: str):
    """--engine ray's settings (None for local), refusing the options it cannot honour, each in one line."""
    if engine != "ray":
        if address:
            raise fail("--ray-address applies to --engine ray; add --engine ray, or drop --ray-address")
        return None
    from ..predict.options import RaySettings
    from ..predict.ray_engine import import_ray

    import_ray()  # not installed: one line saying how to install it
    if parallel:
        raise fail("--parallel sets this machine's processes; with --engine ray the cluster's workers do the work: "
                   "drop --parallel")
    if gpu_jpeg:
        raise fail("--gpu-jpeg is not available with --engine ray; drop it (the workers decode with Pillow)")
    if backend != "eager":
        raise fail(f"--engine ray runs the eager backend; drop --backend {backend}")
    return RaySettings(address=address, device=device, amp=amp)


def _where(ray, predictor) -> str:
    """Where the network runs, for the first line (an address as given, less any user:secret@)."""
    if ray is None:
        return str(predictor.device)
    from ..storage import shown_url

    if ray.address:
        return f"Ray at {shown_url(ray.address)}"
    env = os.environ.get("RAY_ADDRESS")
    return f"Ray at {shown_url(env)} (RAY_ADDRESS)" if env else "a Ray started on this machine"


@app.command("predict")
def predict(
    inputs: List[str] = typer.Argument(..., help="Image folders (searched recursively), image files, quoted globs "
                                       "('photos/**/*.jpg') or .txt files listing one image path per line. Each may "
                                       "be a URL: an object-store prefix (walked like a folder), one object, or a "
                                       ".txt list of keys relative to it or full URLs; s3:// needs the 's3' extra, "
                                       "gs:// 'gcs', az:// 'azure', http(s):// 'http' (read-only)."),
    out: str = typer.Option(..., "--out", "-o", metavar="PATH|URL", help="Output folder; masks mirror the inputs' relative paths. "
                            "Nothing is written anywhere else. May be an object-store URL (s3://, gs://, az://; "
                            "not http(s)://), with the same extras as the inputs; credentials come from the "
                            "store's usual settings (for S3: AWS_* variables or a profile, AWS_ENDPOINT_URL for "
                            "S3-compatible stores)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help=f"Checkpoint file or shipped model name "
                                          f"(default: {DEFAULT_WEIGHTS}; see `fcn-label models`). Also takes "
                                          "pytorch-fcn .pth state dicts."),
    arch: Optional[str] = typer.Option(None, help="For bare state dicts: fcn32s, fcn16s or fcn8s (checked against the file)."),
    num_classes: Optional[int] = typer.Option(None, help="For bare state dicts: expected class count (checked)."),
    classes: Optional[str] = typer.Option(None, help="Text file (path or URL) of class names, one per line in index order ('name r g b' lines also set the colours); for bare state dicts."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass "
                                             "(default: 8 on a GPU; on the CPU as many same-size images as fit in 0.3 Mpx, at most 32 - "
                                             "1 for a 480x360 frame, where larger batches run slower); "
                                             "only same-size images share a batch, so results equal one-at-a-time inference."),
    device: str = typer.Option("auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    gpu_jpeg: bool = typer.Option(False, "--gpu-jpeg", help="On CUDA: decode plain JPEGs on the GPU in batches "
                                  "(nvJPEG), leaving the CPU cores the PNGs and the outputs. nvJPEG's pixels can differ "
                                  "slightly from Pillow's, so a mask may differ in a few pixels; CMYK, EXIF-rotated "
                                  "and truncated JPEGs are still decoded by Pillow."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (float16 autocast) on CUDA; ignored on CPU."),
    tta: TTA = typer.Option("none", "--tta", help=TTA_HELP),
    flip: bool = typer.Option(False, "--flip", help="The same as --tta flip."),
    tile: int = typer.Option(0, min=0, help="Tile size in pixels for sliding-window inference; 0 = only tile "
                             "images above --tile-threshold pixels (with 1024-pixel tiles)."),
    tile_overlap: float = typer.Option(0.25, min=0.0, max=0.9, help="Fraction of a tile shared with its neighbour; "
                                       "overlapping probabilities are averaged."),
    tile_threshold: int = typer.Option(2_000_000, help="Images with more pixels than this are tiled automatically."),
    palette: Palette = typer.Option(Palette.model, help="Mask colours: model (the model's palette), voc (VOC colour map) or "
                                "none (plain greyscale index PNG)."),
    coco: bool = typer.Option(True, "--coco/--no-coco", help="Write predictions.json: COCO results with compressed RLE per class."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write colour overlays under OUT/overlays/ for eyeballing."),
    probs: bool = typer.Option(False, "--probs", help="Also write per-pixel confidence (8-bit, 255 = certain) under OUT/confidence/."),
    gt: Optional[str] = typer.Option(None, help="Ground truth with the same relative names (a mask folder, or any "
                                      "layout evaluate reads: VOC root, images/ + masks/, list file, COCO JSON): "
                                      "adds pixel accuracy and per-class IoU to predictions.csv. A URL is downloaded first."),
    ignore_index: Optional[int] = typer.Option(None, help="Ground-truth label to ignore (default: the model's, "
                                               "e.g. 11 for CamVid, 255 for VOC)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images already done (default: skip them, so a "
                                   "killed job resumes)."),
    shard: Optional[str] = typer.Option(None, help="I/N: process only part I of N (0-based) so N processes or machines "
                                        "split one job; defaults to torchrun's RANK/WORLD_SIZE."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images larger than this (decompression-bomb guard)."),
    backend: Backend = typer.Option("eager", help=BACKEND_HELP),
    calib: Optional[Path] = typer.Option(None, help="With --backend ort-int8: calibrate on these images (a "
                                         "folder, or a list file: one image per line, or 'image mask' lines such "
                                         "as camvid/train.txt). Default: --calib-count images of this job itself, "
                                         "spread evenly over its inputs (the same for every --shard). Nothing is "
                                         "cached; temporary files stay inside --out (in a temporary folder of this machine when "
                                         "--out is a URL)."),
    calib_count: int = typer.Option(32, min=1, help="How many images int8 calibration reads (spread evenly)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    parallel: Optional[str] = typer.Option(None, "--parallel", metavar="KEY=N,...", help=PARALLEL_HELP,
                                           rich_help_panel="Expert"),
    engine: Engine = typer.Option("local", "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="HOST:PORT", help=RAY_ADDRESS_HELP,
                                              rich_help_panel="Expert"),
) -> None:
    """Predict segmentation masks for images of any size.

    Writes OUT/<name>.png (palette PNG, pixel value = class index), predictions.csv (one row per image: classes present, confidence, review hints), predictions.json (COCO results, compressed RLE) and failures.csv.

    Unreadable images are reported on one line each and skipped; the exit status is 1 when any image failed. Re-running the same command resumes: finished images are skipped.

    Example: fcn-label predict examples/ --out masks/

    Object stores: fcn-label predict s3://bucket/photos --out s3://bucket/masks (any mix of local and remote works).
    """
    from ..checkpoint import load_checkpoint, resolve_weights  # torch: only when a verb runs
    from ..classes import read_class_spec
    from ..predict import PredictJob, PredictOptions, Predictor
    from ..staging import fetch_for_process
    from ..storage import check_writable, is_url, local_path, shown_url

    shard_i, shard_n = _parse_shard(shard)
    remote_out = is_url(out)
    if remote_out:  # a store that cannot be written: one line, exit 2, before anything is loaded or read
        check_writable(out, "--out")
        out = out.rstrip("/")
        shown_out = shown_url(out)
    else:
        out = Path(local_path(out))
        shown_out = str(out)
    try:
        par = parse_parallel(parallel)
    except ValueError as e:
        raise fail(str(e)) from None
    ray = _ray_settings(value(engine), ray_address, device, amp, parallel, gpu_jpeg, value(backend))
    if ray is not None and gt is not None and is_url(gt):
        raise fail(f"--gt {gt}: with --engine ray the workers read the ground truth; give a folder every node sees")
    # a URL --gt or --classes: a local copy for this process (removed at exit), read as before
    classes = fetch_for_process(classes, "--classes") if classes is not None and is_url(classes) else classes
    gt = fetch_for_process(gt, "--gt") if gt is not None and is_url(gt) else (Path(gt) if gt is not None else None)
    spec = read_class_spec(classes) if classes is not None else None  # an explicit file: its names and colours
    weights_path = resolve_weights(weights)
    ck = load_checkpoint(weights_path, arch=arch, num_classes=num_classes, classes=spec.names if spec else None)
    if spec is not None:
        ck.classes = spec.names
        ck.palette = spec.palette or ck.palette
    if gt is not None and not gt.exists():
        raise fail(f"--gt {gt}: not found; give the folder of ground-truth masks (or a VOC root, list file, COCO JSON)")
    if not remote_out and out.exists() and not out.is_dir():
        raise fail(f"--out {out}: is a file, not a folder; choose another --out")
    items, problems = discover(inputs, out)
    if not items and problems:
        for path, reason in problems:
            msg = reason if reason.startswith(path) else f"{path}: {reason}"
            console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
        raise typer.Exit(2)
    backend = value(backend)
    calib_arrays = calibration_images(backend, calib, calib_count,
                                      [it.path for it in items], "of this job (spread evenly over its inputs)")
    tta_flip, tta_scales = tta_settings(tta, flip)
    # with --engine ray the driver runs no network: its predictor (on the CPU, leaving this node's GPU to an
    # actor) only plans the batches, and the workers build theirs on their own devices
    predictor = Predictor(ck, device="cpu" if ray else device, amp=amp and not ray, tile=tile or None, tile_overlap=tile_overlap,
                          tile_threshold=tile_threshold, flip=tta_flip, scales=tta_scales, backend=backend,
                          calib=calib_arrays,
                          workdir=_backend_workdir(out, remote_out) if backend != "eager" else None)
    if gpu_jpeg and predictor.device.type != "cuda":
        raise fail(f"--gpu-jpeg decodes JPEGs on a CUDA GPU; this run is on {predictor.device}: drop --gpu-jpeg "
                   "or use --device cuda")
    if amp and not ray and predictor.device.type != "cuda":
        console.print("[yellow]note:[/] --amp only applies on CUDA; running in float32 on the CPU")
    opts = PredictOptions(out=out, batch_size=batch_size, workers=par.workers, encoders=par.encoders, procs=par.procs,
                          palette=palette, coco=coco,
                          overlay=overlay, probs=probs, gt=gt, ignore_index=ignore_index, overwrite=overwrite,
                          shard=(shard_i, shard_n), max_pixels=max_pixels,
                          jpeg_device=str(predictor.device) if gpu_jpeg else None, ray=ray)
    src = ck.metadata.get("name") or weights_path.name
    console.print(escape(f"fcn-label: {len(items)} images, model {src} ({ck.config.arch}, {ck.config.num_classes} "
                         f"classes) on {_where(ray, predictor)}" + (f", backend {backend}" if backend != "eager" else "") + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else "")),
                  soft_wrap=True)

    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, disable=quiet,
                        transient=False)
    task = progress.add_task("predict", total=None, rate="")
    import time as _t

    t0 = _t.perf_counter()
    start_done = [None]

    def on_progress(done: int, total: int) -> None:
        if start_done[0] is None:
            start_done[0] = done
        dt = _t.perf_counter() - t0
        rate = (done - start_done[0]) / dt if dt > 0 else 0
        progress.update(task, completed=done, total=total, rate=f"{rate:.1f} img/s")

    def on_failure(path: str, msg: str) -> None:
        progress.console.print(f"[red]failed:[/] {escape(msg)}", soft_wrap=True)

    job = PredictJob(predictor, opts, on_progress, on_failure)
    with progress:
        res = job.run(items, problems)
    console.print(escape(
        f"done {res.done}, skipped {res.skipped} (already done), failed {len(res.failed)} "
        f"in {res.seconds:.1f}s ({res.images_per_second:.1f} img/s); outputs in {shown_out}"
        + (f"; failures listed in {shown_out}/failures.csv" if res.failed else "")
    ), soft_wrap=True)
    if res.stopped:
        console.print(f"[bold red]error:[/] stopped early: {escape(res.stopped)}", soft_wrap=True)
    if res.failed or res.stopped:
        raise typer.Exit(1)
