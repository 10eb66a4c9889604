"""`fcn-label export`: predicted masks to CVAT, Label Studio or LabelMe for correction."""

from __future__ import annotations

from typing import Optional

import typer

from ..export import FORMATS
from ._common import app, choice, console, staged, value

ExportFormat = choice("ExportFormat", FORMATS)


@app.command("export")
def export_cmd(
    pred_dir: str = typer.Argument(..., help="The --out folder of `fcn-label predict` (its masks, records and COCO "
                                  "predictions); a URL is downloaded whole first."),
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="cvat (Segmentation mask 1.1 folder + zip), labelstudio "
                            "(BrushLabels config + tasks with RLE pre-annotations) or labelme (polygons per image)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder to write; nothing is written elsewhere. An object store "
                             "URL gets the files when the run ends (what is there already counts as exported)."),
    images: Optional[str] = typer.Option(None, "--images", help="Root (or URL) of the photos, when they moved since predict "
                                          "(looked up by the mask's relative name). Used by labelme and labelstudio."),
    only: Optional[str] = typer.Option(None, "--only", help="List file or URL (one input path or relative name per line, "
                                        "as `select` writes): export just these images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images already exported in --out (default: skip them)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", min=0.0, help="labelme: polygon simplification "
                                              "in pixels (Douglas-Peucker). Default: chosen per image (1, 0.5, "
                                              "0.25 or 0) so that each keeps 99.5 % of its pixels; 0 keeps every "
                                              "boundary pixel."),
    url_prefix: Optional[str] = typer.Option(None, "--url-prefix", help="labelstudio: prefix of each task's image "
                                             "URL (default '/data/local-files/?d=', Label Studio's local file serving)."),
) -> None:
    """Write predicted masks in an annotation tool's format, so people can correct them."""
    fmt = value(fmt)
    with staged() as st:
        pred_dir = st.input(pred_dir, "predictions folder")
        images = st.input(images, "--images")
        only = st.input(only, "--only")
        out = st.output(out, "--out")
        _export(pred_dir, fmt, out, images, only, overwrite, tolerance, url_prefix)


def _export(pred_dir, fmt, out, images, only, overwrite, tolerance, url_prefix) -> None:
    """The verb on local paths (URL arguments staged by the caller)."""
    from ..export import export

    res, folder, problems = export(pred_dir, fmt, out, images=images, only=only, overwrite=overwrite,
                                   tolerance=tolerance, url_prefix=url_prefix)
    for p in problems:
        console.print(f"[yellow]warning:[/] {p}", soft_wrap=True, markup=False)
    for msg in res.notes[:20]:
        console.print(f"[yellow]note:[/] {msg}", soft_wrap=True, markup=False)
    if len(res.notes) > 20:
        console.print(f"[yellow]note:[/] ... and {len(res.notes) - 20} more", soft_wrap=True, markup=False)
    if res.summary:
        console.print(res.summary, soft_wrap=True, markup=False)
    for _, msg in res.failed:
        console.print(f"[red]failed:[/] {msg}", soft_wrap=True, markup=False)
    console.print(f"export {fmt}: {res.written} written, {res.skipped} already done, {len(res.failed)} failed, "
                  f"{len(folder.classes)} classes -> {out}", soft_wrap=True, markup=False)
    if res.failed or problems:  # as predict: exit 1 when an image could not be exported
        raise typer.Exit(1)
