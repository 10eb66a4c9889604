"""Shared CLI plumbing: the Typer app, the console, and turning user errors into one line."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from enum import Enum
from typing import Iterator, Sequence

import typer
from rich.console import Console, RenderHook
from rich.markup import escape
from rich.text import Text

from ..choices import BACKENDS, TTA_LEVELS
from ..errors import UserError

app = typer.Typer(
    name="fcn-label",
    help="Label image datasets with FCN semantic segmentation: predict masks, evaluate them, fine-tune models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True, highlight=False)


def version() -> str:
    """The installed distribution's version; the package's own when run from a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fcn-label")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def _print_version(flag: bool) -> None:
    if flag:
        typer.echo(f"fcn-label {version()}")
        raise typer.Exit()


@app.callback()
def _top_level(
    show_version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                      help="Print fcn-label's version and exit."),
) -> None:
    """Options that come before the verb."""

# A user's mistake: one red line, exit 2. Anything else is a bug and keeps its traceback (exit 1);
# a bare ValueError is deliberately not here (see fcn_label.errors).
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError)


def choice(name: str, values: Sequence[str]) -> type[Enum]:
    """A Typer enum for a choice option: --help lists the values, a wrong one exits 2 naming them."""
    return Enum(name, [(v, v) for v in values], type=str)


def value(v):
    """An enum member's string (what TrainConfig and the library take), anything else as is."""
    return v.value if isinstance(v, Enum) else v


# --backend (predict, evaluate --weights); the backends themselves: fcn_label.predict.backends
Backend = choice("Backend", BACKENDS)
BACKEND_HELP = ("Inference backend. eager: exact float32 PyTorch (default). Opt-in CPU backends, not exact "
                "(CamVid val mean IU of each in the docs): bf16 (bfloat16; fast only on CPUs with AVX512-BF16/AMX) "
                "and ort-int8 (ONNX Runtime static int8, needs the 'onnx' extra; calibrates on sample images: "
                "see --calib).")


# --tta (predict, evaluate --weights); the levels: fcn_label.choices.TTA_LEVELS
TTA = choice("TTA", tuple(TTA_LEVELS))
TTA_HELP = ("Test-time augmentation: none (default); flip: average each image's prediction with its mirror "
            "image's (2 forward passes); scales: also at 0.75x and 1.25x size, each mirrored (6 passes, about 6x "
            "the time). Their CamVid val gains: docs, Performance.")


def tta_settings(tta, flip: bool) -> tuple[bool, tuple[float, ...]]:
    """(flip, scales) for the Predictor from --tta and the older --flip (the same as --tta flip)."""
    level = value(tta)
    if flip and level == "none":
        level = "flip"
    return TTA_LEVELS[level]


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one red line on stderr and return an Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


class _ShownHook(RenderHook):
    """While URL arguments are staged: a temporary-folder path in a line the verb prints becomes the URL
    it stands for, before rich lays the line out (so it wraps as the URL would)."""

    def __init__(self, shown):
        self._shown = shown

    def process_renderables(self, renderables: list) -> list:
        return [self._map(r) if isinstance(r, Text) else r for r in renderables]

    def _map(self, text: Text) -> Text:
        plain = text.plain
        if self._shown(plain) == plain:
            return text
        out = text.blank_copy()
        pos = 0
        for m in re.finditer(r"\S+", plain):  # word by word, so styles elsewhere in the line stay put
            shown = self._shown(m.group())
            if shown != m.group():
                out.append_text(text[pos:m.start()])
                out.append(shown)
                pos = m.end()
        out.append_text(text[pos:])
        return out


@contextmanager
def staged() -> Iterator["Staging"]:
    """A :class:`~fcn_label.staging.Staging` for one verb: URL arguments become local copies, outputs
    go up at the end (also when the verb exits 1 or is interrupted), and every line printed or raised
    meanwhile names the URLs, not the temporary folder. Without URLs nothing changes."""
    from ..staging import Staging

    def started() -> None:  # the first URL: from now on, printed paths may need translating
        console.push_render_hook(_ShownHook(st.shown))

    st = Staging(log=lambda m: console.print(escape(m), soft_wrap=True, style="dim"), started=started)
    try:
        with st:
            try:
                yield st
            except USER_ERRORS as e:
                text = st.shown(str(e))
                if text != str(e):
                    raise UserError(text) from None
                raise
    finally:
        if st.root is not None:
            console.pop_render_hook()


def run_cli(argv: list[str] | None = None) -> None:
    """Run the app; user mistakes end as one line on stderr and exit status 2, bugs as a traceback (exit 1).

    Typer's own usage errors (a bad choice, a missing option) are user mistakes
    too: one line naming the option and the valid values, not a box.
    """
    try:
        from typer._click import exceptions as click_errors  # the click Typer vendors
    except ImportError:  # older Typer: plain click
        from click import exceptions as click_errors
    try:
        rv = app(args=argv, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except click_errors.ClickException as e:
        console.print(f"[bold red]error:[/] {escape(e.format_message())}", soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("[yellow]aborted[/]")
        sys.exit(1)
    except USER_ERRORS as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished outputs are kept; re-run the same command to resume")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
