"""A CVAT auto-annotation function (cvat-sdk's detection-function interface) backed by an fcn-label model.

CVAT's own CLI loads it by module name and calls :func:`create` with the ``-p NAME=TYPE:VALUE``
parameters::

    cvat-cli task auto-annotate TASK --function-module fcn_label.integrations.cvat -p weights=str:model.pt
    cvat-cli function create-native "fcn-label" --function-module fcn_label.integrations.cvat
    cvat-cli function run-agent FUNCTION_ID --function-module fcn_label.integrations.cvat

Parameters (all optional): ``weights`` (a checkpoint path or shipped model name; default the shipped
model), ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``flip`` (test-time mirror averaging,
as ``predict --flip``), ``tolerance`` (polygon simplification in pixels when CVAT asks for polygons;
default chosen per image as the LabelMe export does).

The spec declares one ``mask`` label per class of the checkpoint, by name: CVAT matches them to the
task's labels by name. :meth:`FcnFunction.detect` returns one mask per class present in the image,
equal to the mask ``fcn-label predict`` writes for the same image; when the driver asks for polygons
(``--conv-mask-to-poly``, or the agent's request) it returns the LabelMe export's polygons instead,
one per connected region, drawn in order (``z_order``) so that regions inside another's hole lie on
top. A confidence threshold from the driver (``--conf-threshold``) leaves out the pixels whose
predicted class has a lower probability: CVAT's rule is that a function returns only what it is at
least that sure of.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import ConfigError, UserError

try:
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk.masks import encode_mask
except ImportError:  # loaded by cvat-cli, which brings cvat-sdk; from Python, say which extra
    raise UserError('fcn_label.integrations.cvat needs cvat-sdk: pip install "fcn-label[cvat]"') from None

# -p NAME=TYPE:VALUE parameters create() takes, and the type each is converted to
PARAMETERS = {"weights": str, "device": str, "flip": bool, "tolerance": float}


class FcnFunction:
    """One checkpoint behind CVAT's detection-function interface: ``spec`` and ``detect``."""

    def __init__(self, weights: str | None = None, device: str = "auto", flip: bool = False,
                 tolerance: float | None = None):
        from ..checkpoint import load_checkpoint, resolve_weights
        from ..predict import Predictor

        if tolerance is not None and tolerance < 0:
            raise ConfigError(f"-p tolerance={tolerance}: must be >= 0 (0 keeps every boundary pixel); "
                              "leave it out to choose it per image")
        ck = load_checkpoint(resolve_weights(weights or None))
        names = list(ck.classes)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{weights or 'the default model'}: class names {', '.join(dupes)} appear more than "
                              "once; CVAT matches labels by name: rename the classes (fcn-label finetune --classes)")
        self.classes = names
        self.tolerance = tolerance
        self.predictor = Predictor(ck, device=device, flip=flip)
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, i, type="mask") for i, name in enumerate(names)])

    def labels(self, image, conf_threshold: float | None = None) -> np.ndarray:
        """The image's label map as ``fcn-label predict`` computes it; below ``conf_threshold``:
        :func:`~fcn_label.export.labelme.unlabelled` (no class)."""
        from ..export.labelme import unlabelled
        from ..images import pil_to_rgb

        pred = self.predictor.predict_arrays([pil_to_rgb(image)])[0]
        labels = pred.labels
        if conf_threshold:  # None or 0: every pixel
            none = unlabelled(len(self.classes))
            labels = labels.astype(np.int32 if none > 255 else np.uint8)  # a copy: the prediction stays as it was
            labels[pred.confidence < conf_threshold] = none
        return labels

    def detect(self, context: "cvataa.DetectionFunctionContext", image) -> list:
        labels = self.labels(image, context.conf_threshold)
        if context.conv_mask_to_poly:
            return self.polygons(labels)
        present = np.nonzero(np.bincount(labels.ravel(), minlength=len(self.classes)))[0]
        return [cvataa.mask(int(c), encode_mask(labels == c)) for c in present if c < len(self.classes)]

    def polygons(self, labels: np.ndarray) -> list:
        """The LabelMe export's polygons for ``labels``, later ones on top (``z_order``) as LabelMe paints them."""
        from ..export.labelme import fitted_shapes

        index = {name: i for i, name in enumerate(self.classes)}
        fit = fitted_shapes(labels, self.classes, self.tolerance)
        return [cvataa.polygon(index[s["label"]], [v for p in s["points"] for v in p], z_order=z)
                for z, s in enumerate(fit.shapes)]


def from_parameters(**params: Any) -> FcnFunction:
    """A function from ``-p`` parameters as cvat-cli passes them (see :data:`PARAMETERS`); a wrong one raises
    :class:`~fcn_label.errors.UserError` naming it."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ConfigError(f"-p {unknown[0]}: unknown parameter of fcn_label.integrations.cvat; "
                          f"known: {', '.join(f'{k}={t.__name__}:...' for k, t in PARAMETERS.items())}")
    kwargs = {}
    for name, value in params.items():
        want = PARAMETERS[name]
        if want is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"-p {name}={value}: not a boolean; give -p {name}=bool:true or bool:false")
            value = value.lower() in ("true", "1", "yes")
        elif want is float and not isinstance(value, bool):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"-p {name}={value}: not a number; give -p {name}=float:0.5") from None
        elif not isinstance(value, want):
            raise ConfigError(f"-p {name}={value!r}: expected {want.__name__}; give -p {name}={want.__name__}:...")
        kwargs[name] = value
    return FcnFunction(**kwargs)


def create(**params: Any) -> FcnFunction:
    """The factory cvat-cli calls with the ``-p`` parameters. cvat-cli prints a traceback for any exception
    it is not expecting, so a user's mistake here ends the process with one line and exit status 2, as
    fcn-label's own commands do; from Python, use :class:`FcnFunction` or :func:`from_parameters`."""
    try:
        return from_parameters(**params)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
