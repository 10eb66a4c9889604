"""Old import path: use :mod:`fcn_label.predict.backends`.

Kept so code written against the old layout keeps importing; nothing in the package uses it.
"""

import warnings

from .predict.backends import KINDS, MULTIPLE, Backend, BackendError, _Padded, make_backend  # noqa: F401

warnings.warn("fcn_label.accel moved to fcn_label.predict.backends", DeprecationWarning, stacklevel=2)
