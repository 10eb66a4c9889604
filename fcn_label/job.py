"""Old import path (before issue 11): use :mod:`fcn_label.predict`.

Kept so code written against the old layout keeps importing; nothing in the package uses it.
"""

import warnings

from .predict.discover import LIST_SUFFIXES, Item, discover, shard_from_env, shown  # noqa: F401
from .predict.decoding import WORKER_MAX_PIXELS, release_free_memory  # noqa: F401
from .predict.job import JobResult, PredictJob, PredictOptions  # noqa: F401
from .predict.layout import CONFIDENCE_DIR, OVERLAY_DIR, STATE_DIR  # noqa: F401

warnings.warn("fcn_label.job moved to fcn_label.predict", DeprecationWarning, stacklevel=2)
