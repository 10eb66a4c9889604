"""Old import path (before issue 11): layouts in :mod:`fcn_label.datasets`, class files in
:mod:`fcn_label.classes`, training data in :mod:`fcn_label.train`.

Kept so code written against the old layout keeps importing; nothing in the package uses it.
"""

import warnings

from .classes import CLASS_FILE_NAME, find_class_file, mask_palette, read_class_file  # noqa: F401
from .datasets import CocoRasteriser, Pair, decode_segmentation, detect_layout, load_pairs  # noqa: F401
from .datasets.folders import pairs_from_folders  # noqa: F401
from .datasets.listfile import pairs_from_list  # noqa: F401
from .datasets.voc import pairs_from_voc  # noqa: F401
from .train.augment import Augment  # noqa: F401
from .train.data import SegmentationDataset, median_frequency_weights  # noqa: F401

warnings.warn("fcn_label.data moved to fcn_label.datasets / fcn_label.classes / fcn_label.train",
              DeprecationWarning, stacklevel=2)
