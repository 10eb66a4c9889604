"""fcn-label: label image datasets with FCN semantic segmentation.

Usable from Python without the CLI::

    from fcn_label import load_checkpoint, Predictor
    ck = load_checkpoint("pretrained/fcn8s-compact-camvid.pt")
"""

from .io import InputError, read_image, read_mask
from .metrics import confusion_matrix, scores
from .model import ARCHS, FCN, FCNConfig
from .weights import Checkpoint, Normalization, WeightsError, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ARCHS", "FCN", "FCNConfig", "Checkpoint", "Normalization", "InputError", "WeightsError",
    "load_checkpoint", "save_checkpoint", "read_image", "read_mask", "confusion_matrix", "scores",
]
