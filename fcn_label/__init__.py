"""fcn-label: label image datasets with FCN semantic segmentation.

Usable from Python without the CLI::

    from fcn_label import load_checkpoint, read_image
    from fcn_label.predict import Predictor
    ck = load_checkpoint("pretrained/fcn8s-compact-camvid.pt")
    labels = Predictor(ck).predict_arrays([read_image("examples/0016E5_07959.png")])[0].labels
"""

from ._lazy import lazy_attributes
from .errors import ConfigError, InputError, UserError, WeightsError

_WHERE = {name: ".checkpoint" for name in ("Checkpoint", "Normalization", "load_checkpoint", "save_checkpoint")}
_WHERE.update({"ClassSpec": ".classes", "read_image": ".images",
               "read_mask": ".images", "confusion_matrix": ".metrics", "scores": ".metrics", "ARCHS": ".model",
               "FCN": ".model", "FCNConfig": ".model"})


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__version__ = "0.2.0"  # the one place: pyproject.toml reads it for the build

__all__ = [
    "ARCHS", "FCN", "FCNConfig", "Checkpoint", "ClassSpec", "ConfigError", "Normalization", "InputError",
    "UserError", "WeightsError", "load_checkpoint", "save_checkpoint", "read_image", "read_mask",
    "confusion_matrix", "scores",
]
