"""Old import path (before issue 11): use :mod:`fcn_label.predict.outputs`.

Kept so code written against the old layout keeps importing; nothing in the package uses it.
"""

import warnings

from .predict.outputs import (coco_annotations, encode_png, flat_palette, write_confidence,  # noqa: F401
                              write_mask, write_overlay)

warnings.warn("fcn_label.outputs moved to fcn_label.predict.outputs", DeprecationWarning, stacklevel=2)
