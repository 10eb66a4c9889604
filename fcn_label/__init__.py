"""fcn-label: label image datasets with FCN semantic segmentation.

Usable from Python without the CLI::

    from fcn_label import load_checkpoint, read_image
    from fcn_label.predict import Predictor
    ck = load_checkpoint("pretrained/fcn8s-compact-camvid.pt")
    labels = Predictor(ck).predict_arrays([read_image("examples/0016E5_07959.png")])[0].labels
"""

from .errors import ConfigError, InputError, UserError

_WHERE = {name: ".checkpoint" for name in ("Checkpoint", "Normalization", "WeightsError", "load_checkpoint",
                                        "save_checkpoint")}
_WHERE.update({"ClassSpec": ".classes", "resolve_classes": ".classes", "read_image": ".images",
               "read_mask": ".images", "confusion_matrix": ".metrics", "scores": ".metrics", "ARCHS": ".model",
               "FCN": ".model", "FCNConfig": ".model"})


def __getattr__(name: str):
    """Imported on first use (PEP 562), so that importing this package does not import torch."""
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))

__version__ = "0.1.0"

__all__ = [
    "ARCHS", "FCN", "FCNConfig", "Checkpoint", "ClassSpec", "ConfigError", "Normalization", "InputError",
    "UserError", "WeightsError", "load_checkpoint", "resolve_classes", "save_checkpoint", "read_image", "read_mask",
    "confusion_matrix", "scores",
]
