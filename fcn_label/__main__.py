"""`python -m fcn_label ...` is the same as `fcn-label ...`."""

from .cli import main

main()
