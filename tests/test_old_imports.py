"""Code written against the layout before issue 11 still imports, gets the same objects, and is told where they went."""

from __future__ import annotations

import contextlib
import importlib
import sys

import pytest


SHIMS = {"fcn_label.weights", "fcn_label.job", "fcn_label.data", "fcn_label.outputs", "fcn_label.accel"}  # old modules kept as re-exports


@pytest.mark.parametrize("old, name, new", [
    ("fcn_label.weights", "load_checkpoint", "fcn_label.checkpoint"),
    ("fcn_label.weights", "VOC_CLASSES", "fcn_label.classes"),
    ("fcn_label.job", "PredictJob", "fcn_label.predict"),
    ("fcn_label.job", "discover", "fcn_label.predict"),
    ("fcn_label.data", "load_pairs", "fcn_label.datasets"),
    ("fcn_label.data", "Augment", "fcn_label.train.augment"),
    ("fcn_label.data", "read_class_file", "fcn_label.classes"),
    ("fcn_label.outputs", "coco_annotations", "fcn_label.predict.outputs"),
    ("fcn_label.accel", "make_backend", "fcn_label.predict.backends"),
    ("fcn_label.predict", "Predictor", "fcn_label.predict.predictor"),
    ("fcn_label.evaluate", "GroundTruth", "fcn_label.datasets"),
    ("fcn_label.train", "TrainConfig", "fcn_label.train.config"),
])
def test_old_name_is_the_new_object(old, name, new):
    shim = old in SHIMS
    if shim:
        sys.modules.pop(old, None)  # import afresh, so the shim warns again
    with pytest.warns(DeprecationWarning, match=old) if shim else contextlib.nullcontext():
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)
