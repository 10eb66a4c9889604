"""`fcn-label review`: a static page to look through predictions, most doubtful first (logic in :mod:`fcn_label.review`)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ._common import app, console, fail, staged


@app.command("review")
def review(
    pred_dir: str = typer.Argument(..., help="The --out folder of `fcn-label predict` (holds predictions.csv); a URL "
                                  "is downloaded whole first."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for index.html and thumbs/; nothing is written anywhere "
                             "else. Open OUT/index.html in a browser (no server needed, works offline). An object "
                             "store URL gets the files when the run ends."),
    gt: Optional[str] = typer.Option(None, "--gt", help="Folder (or URL) of ground-truth index masks named like the predicted "
                                      "masks: adds each image's mean IoU and the 'lowest IoU first' order (not needed "
                                      "when predict ran with --gt)."),
    images: Optional[str] = typer.Option(None, "--images", "-i", help="Folder (or URL) predict read the images from, when "
                                          "the paths it recorded no longer resolve from here."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Initial order (changeable on the page): confidence "
                                       "(lowest mean confidence first), low (largest low-confidence fraction first), "
                                       "iou (lowest mean IoU first; default when ground truth is known) or name."),
    ignore_index: int = typer.Option(255, "--ignore-index", min=0, max=255, help="With --gt: ground-truth label left "
                                     "out of the IoU (255 for VOC, 11 for CamVid)."),
    thumb_size: int = typer.Option(480, "--thumb-size", min=64, max=4096, help="Longest side of the thumbnails in "
                                   "pixels (they are also what a click enlarges)."),
    workers: int = typer.Option(2, "--workers", "-j", min=1, max=64, help="Threads making thumbnails."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a static review page: every predicted image with its photo, mask overlay and confidence map, sorted by doubt.

    The page sorts by lowest mean confidence, largest low-confidence fraction or lowest IoU, filters by class, enlarges on click and summarises the class pixel shares. Thumbnails are reused by a re-run. Confidence maps need predict --probs.

    Exit status 1 when some file could not be used (each is named above and noted on its row), 2 for unusable arguments.

    Example: fcn-label review masks/ --out review/ && xdg-open review/index.html
    """
    from ..review.page import SORTS as _sorts

    if sort is not None and sort not in _sorts:
        raise fail(f"--sort {sort!r}: choose {', '.join(_sorts)}")
    with staged() as st:
        pred_dir = st.input(pred_dir, "predictions folder")
        gt, images = st.input(gt, "--gt"), st.input(images, "--images")
        out = st.output(out, "--out")
        _review(pred_dir, out, gt, images, sort, ignore_index, thumb_size, workers, quiet)


def _review(pred_dir, out, gt, images, sort, ignore_index, thumb_size, workers, quiet) -> None:
    """The verb on local paths (URL arguments staged by the caller)."""
    from ..review import build_review

    progress = Progress(TextColumn("review"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet, transient=True)
    task = progress.add_task("review", total=None)
    with progress:
        res = build_review(pred_dir, out, gt=gt, images=images, sort=sort, thumb_size=thumb_size,
                           ignore_index=ignore_index, workers=workers,
                           progress=lambda i, n: progress.update(task, completed=i, total=n))
    for p in res.problems[:10]:
        console.print(f"[yellow]warning:[/] {escape(p)}", soft_wrap=True)
    if len(res.problems) > 10:
        console.print(f"... and {len(res.problems) - 10} more (each is noted on its row of the page)")
    console.print(escape(f"review: {res.images} images, {res.thumbs_written} thumbnails written, {res.thumbs_reused} "
                         f"reused, in {res.seconds:.1f}s; open {res.index}"), soft_wrap=True)
    if res.problems:  # as predict: the batch went on, but not every file was usable
        raise typer.Exit(1)
