"""fcn-label: label image datasets with FCN semantic segmentation.

Usable from Python without the CLI::

    from fcn_label import load_checkpoint, read_image
    from fcn_label.predict import Predictor
    ck = load_checkpoint("pretrained/fcn8s-compact-camvid.pt")
    labels = Predictor(ck).predict_arrays([read_image("examples/0016E5_07959.png")])[0].labels
"""

from .checkpoint import Checkpoint, Normalization, WeightsError, load_checkpoint, save_checkpoint
from .classes import ClassSpec, resolve_classes
from .errors import ConfigError, InputError, UserError
from .images import read_image, read_mask
from .metrics import confusion_matrix, scores
from .model import ARCHS, FCN, FCNConfig

__version__ = "0.1.0"

__all__ = [
    "ARCHS", "FCN", "FCNConfig", "Checkpoint", "ClassSpec", "ConfigError", "Normalization", "InputError",
    "UserError", "WeightsError", "load_checkpoint", "resolve_classes", "save_checkpoint", "read_image", "read_mask",
    "confusion_matrix", "scores",
]
