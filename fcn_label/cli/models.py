"""`fcn-label models`: what can be built and what weights ship."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ._common import app


@app.command("models")
def models(
    weights: str = typer.Option(None, "--weights", "-w", help="Also describe this checkpoint file in detail."),
) -> None:
    """List the architectures and the shipped weights with their measured metrics."""
    from ..catalog import SHIPPED  # torch-free: the table reads what each file says about itself

    out = Console()
    t = Table(title="Architectures", show_lines=False)
    t.add_column("arch")
    t.add_column("what")
    t.add_row("fcn32s", "VGG16 fully convolutional, one 32x upsampling (paper's FCN-32s)")
    t.add_row("fcn16s", "FCN-32s + pool4 skip, 16x upsampling (FCN-16s)")
    t.add_row("fcn8s", "FCN-16s + pool3 skip, 8x upsampling (FCN-8s); compact variants set width / BatchNorm")
    out.print(t)
    t = Table(title="Shipped weights (inside the package: fcn_label/pretrained/)")
    for col in ("name", "arch", "classes", "val mean IU", "val pixel acc", "file", "license"):
        t.add_column(col)
    for info in SHIPPED.values():
        if not info.path.is_file():
            t.add_row(info.name, "-", "-", "-", "-", f"missing: {info.file}", info.license)
            continue
        arch, num_classes, m = _summary(info.path)
        t.add_row(info.name, arch, str(num_classes), _pct(m.get("val_mean_iou")),
                  _pct(m.get("val_pixel_accuracy")), info.file, info.license.split(" (")[0])
    out.print(t)
    for info in SHIPPED.values():  # an installed wheel and a source checkout load from different places
        out.print(f"{info.name} is loaded from {info.path}" if info.path.is_file()
                  else f"{info.name}: missing, expected at {info.path}", soft_wrap=True)
    if weights:
        from ..checkpoint import load_checkpoint  # torch: a file described in detail is loaded and checked

        ck = load_checkpoint(weights)
        out.print(f"[bold]{weights}[/]: {ck.config.arch}, width {ck.config.width}, "
                  f"{'BatchNorm, ' if ck.config.batch_norm else ''}padding {ck.config.padding}, "
                  f"{ck.config.num_classes} classes: {', '.join(ck.classes)}")
        out.print(f"input: {'BGR' if ck.normalization.bgr else 'RGB'} x {ck.normalization.scale:g}, "
                  f"mean {ck.normalization.mean}, std {ck.normalization.std}; ignore index {ck.ignore_index}")
        for k, v in ck.metadata.get("metrics", {}).items():
            if isinstance(v, float):
                out.print(f"  {k}: {v:.4f}")


def _summary(path) -> tuple[str, int, dict]:
    """Architecture, class count and metrics of a weights file: from its summary where it has one (no
    torch), else from the full load, which also names the problem of a damaged file in one line."""
    from ..catalog import read_summary

    s = read_summary(path)
    if s is not None:
        return s.arch, s.num_classes, s.metadata.get("metrics") or {}
    from ..checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return ck.config.arch, ck.config.num_classes, ck.metadata.get("metrics", {})


def _pct(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


app.command("info", hidden=True, help="Same as `models`.")(models)
