"""Valid values that torch-bound modules own but the CLI's --help needs: kept torch-free here so
that `fcn-label --help` and each verb's --help build without importing torch (model.py,
checkpoint.py and predict/backends.py import them from this module; one home each)."""

ARCHS = ("fcn32s", "fcn16s", "fcn8s")
DEFAULT_WEIGHTS = "fcn8s-compact-camvid"  # the shipped model predict and evaluate use by default
BACKENDS = ("eager", "bf16", "ort-int8")  # --backend; see predict/backends.py
CALIBRATED = ("ort-int8",)  # the backends that calibrate int8 ranges on sample images
# --tta: (flip, scales) of each level. "scales" averages three sizes, each with its mirror: the set
# chosen on CamVid val by benchmarks/tta_val.py (docs: Performance); fcn_label.predict.Predictor runs them.
TTA_LEVELS: dict[str, tuple[bool, tuple[float, ...]]] = {
    "none": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "scales": (True, (0.75, 1.0, 1.25)),
}
