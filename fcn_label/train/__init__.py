"""Training and fine-tuning: config (options, presets), setup (data, classes, model, optimiser),
loop (the Trainer), augment, data, distributed (torchrun), backbone (ImageNet VGG16)."""

from .config import CHOICES, PAPER_SUM_LOSS, PRESETS, RESUME_FREE, VGG16_MODEL, DivergedError, TrainConfig
from .data import SegmentationDataset, median_frequency_weights
from .loop import EMA, Trainer, evaluate_model, poly_lr
from .setup import Parts, build, transfer_weights

__all__ = ["CHOICES", "PAPER_SUM_LOSS", "PRESETS", "RESUME_FREE", "VGG16_MODEL", "DivergedError", "EMA", "Parts",
           "SegmentationDataset", "TrainConfig", "Trainer", "build", "evaluate_model", "median_frequency_weights",
           "poly_lr", "transfer_weights"]
