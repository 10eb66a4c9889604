"""Old import path (before issue 11): use :mod:`fcn_label.checkpoint` and :mod:`fcn_label.classes`.

Kept so code written against the old layout keeps importing; nothing in the package uses it.
"""

import warnings

from .checkpoint import (CAFFE_BGR, DEFAULT_WEIGHTS, FORMAT, IMAGENET, PRETRAINED_DIR, SHIPPED,  # noqa: F401
                         Checkpoint, Normalization, WeightsError, WeightsInfo, load_checkpoint, resolve_weights,
                         save_checkpoint, vgg16_backbone_state)
from .classes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, voc_palette  # noqa: F401

warnings.warn("fcn_label.weights moved to fcn_label.checkpoint (tables: fcn_label.classes)", DeprecationWarning,
              stacklevel=2)
