"""``python -m fcn_label``: the CLI without relying on the console script being on PATH."""

from .cli import main

main()
