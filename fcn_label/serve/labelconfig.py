"""Which part of a Label Studio labelling config the backend answers: a BrushLabels over an Image.

Label Studio sends its project's config (XML) with /setup (``schema``) and /predict
(``label_config``). The backend needs the control's ``name`` (``from_name``), the image's
``name`` (``to_name``), the task-data key the image URL sits under (``value="$image"``), and the
label names, which must name the model's classes, so that a region's label is a class.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import InputError

MAX_CONFIG_CHARS = 1_000_000  # a labelling config is a page of XML; more is not one


@dataclass(frozen=True)
class BrushTarget:
    from_name: str  # the BrushLabels control's name
    to_name: str  # the Image tag's name
    data_key: str  # the task data key holding the image URL ("image" for value="$image")
    labels: tuple[str, ...]  # label names, in the config's order


def brush_target(config: str, classes: list[str]) -> BrushTarget:
    """The BrushLabels control over an Image whose labels name every class of the model.

    A config with no such control, or whose labels miss some of the model's classes, is answered
    with one line naming what is missing: Label Studio shows it when the model is connected.
    """
    if not isinstance(config, str) or not config.strip():
        raise InputError("label config missing: connect the backend to a project with a labelling interface")
    if len(config) > MAX_CONFIG_CHARS:
        raise InputError(f"label config of {len(config):,} characters is too long (at most {MAX_CONFIG_CHARS:,})")
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise InputError(f"label config is not valid XML ({e})") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    brushes = [el for el in root.iter() if el.tag == "BrushLabels"]
    if not brushes:
        raise InputError("label config has no <BrushLabels> control: fcn-label predicts masks; use the config "
                         "that `fcn-label export --format labelstudio` writes (a BrushLabels over an Image)")
    problems = []
    for b in brushes:
        name, to = b.get("name"), b.get("toName")
        labels = tuple(lab.get("value") for lab in b.iter() if lab.tag == "Label" and lab.get("value"))
        if to not in images:
            problems.append(f"<BrushLabels name={name!r}> labels {to!r}, which is not an <Image>")
            continue
        value = images[to] or ""
        if not value.startswith("$") or len(value) < 2:
            problems.append(f"<Image name={to!r}> has value={value!r}; expected a task field such as \"$image\"")
            continue
        missing = [c for c in classes if c not in labels]
        if missing:
            problems.append(f"<BrushLabels name={name!r}> lacks the model's classes {', '.join(missing)} "
                            f"(the model predicts {', '.join(classes)}; label names must match them exactly)")
            continue
        return BrushTarget(str(name), str(to), value[1:], labels)
    raise InputError("label config does not fit the model: " + "; ".join(problems))
