"""Shared CLI plumbing: the Typer app, the console, and turning user errors into one line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..io import InputError
from ..weights import WeightsError

app = typer.Typer(
    name="fcn-label",
    help="Label image datasets with FCN semantic segmentation: predict masks, evaluate them, fine-tune models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True, highlight=False)

USER_ERRORS = (InputError, WeightsError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one red line on stderr and return an Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def run_cli(argv: list[str] | None = None) -> None:
    """Run the app; user mistakes end as one line on stderr and exit status 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except USER_ERRORS as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished outputs are kept; re-run the same command to resume")
        sys.exit(130)
