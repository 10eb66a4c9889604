"""Review predict's output in a browser: a static page sorted by doubt (see :func:`build_review`)."""

from .page import ReviewResult, build_review  # noqa: F401
