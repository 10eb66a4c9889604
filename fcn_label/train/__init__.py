"""Training and fine-tuning: config (options, presets, config files), setup (data, classes, model, optimiser),
loop (the Trainer), losses (OHEM, Lovász-softmax), augment, data, distributed (torchrun), backbone (ImageNet VGG16)."""

from .._lazy import lazy_attributes
from .config import (CHOICES, PAPER_SUM_LOSS, PRESETS, RESUME_FREE, VGG16_MODEL, DivergedError, TrainConfig,
                     load_config, read_config_file)

_WHERE = {"SegmentationDataset": ".data", "median_frequency_weights": ".data", "EMA": ".loop", "Trainer": ".loop",
          "evaluate_model": ".loop", "poly_lr": ".loop", "Parts": ".setup", "build": ".setup",
          "transfer_weights": ".setup"}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = ["CHOICES", "PAPER_SUM_LOSS", "PRESETS", "RESUME_FREE", "VGG16_MODEL", "DivergedError", "EMA", "Parts",
           "SegmentationDataset", "TrainConfig", "Trainer", "build", "evaluate_model", "median_frequency_weights",
           "load_config", "poly_lr", "read_config_file", "transfer_weights"]
