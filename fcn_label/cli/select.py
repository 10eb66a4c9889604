"""`fcn-label select`: the images to label next (logic in :mod:`fcn_label.selection`)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from ._common import app, console, fail, staged


@app.command("select")
def select(
    pred_dir: str = typer.Argument(..., help="The --out folder of `fcn-label predict` over the unlabelled pool; a URL "
                                  "is downloaded whole first."),
    k: int = typer.Option(..., "--k", "-k", help="How many images to pick (all of them when the pool is smaller)."),
    out: str = typer.Option(..., "--out", "-o", help="List file to write: one input path per line (relative when "
                             "written in the current folder, else absolute); predict and export --only read it. May "
                             "be an object store URL (written as one object at the end)."),
    strategy: str = typer.Option("uncertainty", "--strategy", "-s", help="uncertainty (lowest mean confidence first; "
                                 "from the confidence maps of predict --probs when present), diverse (doubt plus "
                                 "coverage of rarely predicted classes, greedy) or random (seeded baseline)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --strategy random."),
    images: Optional[str] = typer.Option(None, "--images", "-i", help="Folder (or URL) predict read the images from, when "
                                          "the paths it recorded do not resolve from here."),
    masks: Optional[str] = typer.Option(None, "--masks", help="Folder (or URL) of masks named like predict's (e.g. the "
                                         "corrected labels): write 'image mask' lines, a list finetune trains on."),
    diversity: float = typer.Option(1.0, "--diversity", min=0.0, help="diverse only: weight of rare-class coverage "
                                    "against doubt (0 = plain uncertainty)."),
    min_fraction: float = typer.Option(0.001, "--min-fraction", min=0.0, max=1.0, help="diverse only: a class counts "
                                       "as shown in an image from this fraction of its pixels."),
) -> None:
    """Pick the K predicted images most worth a person's time and write them as a list file.

    Example: fcn-label select masks/ --k 30 --out next.txt && fcn-label export masks/ --format cvat --only next.txt --out cvat/
    """
    from ..selection import STRATEGIES

    if strategy not in STRATEGIES:
        raise fail(f"--strategy {strategy!r}: choose {', '.join(STRATEGIES)}")
    if k < 1:
        raise fail(f"--k {k}: give a positive number of images")
    with staged() as st:
        pred_dir = st.input(pred_dir, "predictions folder")
        images, masks = st.input(images, "--images"), st.input(masks, "--masks")
        out = st.output(out, "--out", is_file=True)
        _select(pred_dir, k, out, strategy, seed, images, masks, diversity, min_fraction)


def _select(pred_dir, k, out, strategy, seed, images, masks, diversity, min_fraction) -> None:
    """The verb on local paths (URL arguments staged by the caller)."""
    from ..selection import write_selection

    choices, problems = write_selection(pred_dir, out, k, strategy, seed, images, masks, diversity, min_fraction)
    for p in problems[:10]:
        console.print(f"[yellow]warning:[/] {escape(p)}", soft_wrap=True)
    if len(problems) > 10:
        console.print(f"... and {len(problems) - 10} more")
    for i, ch in enumerate(choices[:5], 1):
        console.print(escape(f"{i:>3}. {ch.row.rel_input}  mean confidence {1 - ch.doubt:.3f}, low-confidence "
                             f"pixels {100 * ch.low:.1f}%"), soft_wrap=True)
    if len(choices) > 5:
        console.print(f"     ... {len(choices) - 5} more")
    written = len(out.read_text(encoding="utf-8").splitlines())
    console.print(escape(f"select: {written} images ({strategy}) written to {out}"), soft_wrap=True)
    if written < len(choices):  # some chosen image had no mask under --masks: named above
        raise typer.Exit(1)
