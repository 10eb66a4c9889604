"""Training and fine-tuning: config (options, presets), setup (data, classes, model, optimiser),
loop (the Trainer), augment, data, distributed (torchrun), backbone (ImageNet VGG16)."""

from .._lazy import lazy_attributes
from .config import CHOICES, PAPER_SUM_LOSS, PRESETS, RESUME_FREE, VGG16_MODEL, DivergedError, TrainConfig

_WHERE = {"SegmentationDataset": ".data", "median_frequency_weights": ".data", "EMA": ".loop", "Trainer": ".loop",
          "evaluate_model": ".loop", "poly_lr": ".loop", "Parts": ".setup", "build": ".setup",
          "transfer_weights": ".setup"}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = ["CHOICES", "PAPER_SUM_LOSS", "PRESETS", "RESUME_FREE", "VGG16_MODEL", "DivergedError", "EMA", "Parts",
           "SegmentationDataset", "TrainConfig", "Trainer", "build", "evaluate_model", "median_frequency_weights",
           "poly_lr", "transfer_weights"]
