"""Training and fine-tuning: config (options, presets), setup (data, classes, model, optimiser),
loop (the Trainer), augment, data, distributed (torchrun), backbone (ImageNet VGG16)."""

from .config import CHOICES, PAPER_SUM_LOSS, PRESETS, RESUME_FREE, VGG16_MODEL, DivergedError, TrainConfig

_WHERE = {"SegmentationDataset": ".data", "median_frequency_weights": ".data", "EMA": ".loop", "Trainer": ".loop",
          "evaluate_model": ".loop", "poly_lr": ".loop", "Parts": ".setup", "build": ".setup",
          "transfer_weights": ".setup"}


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

__all__ = ["CHOICES", "PAPER_SUM_LOSS", "PRESETS", "RESUME_FREE", "VGG16_MODEL", "DivergedError", "EMA", "Parts",
           "SegmentationDataset", "TrainConfig", "Trainer", "build", "evaluate_model", "median_frequency_weights",
           "poly_lr", "transfer_weights"]
