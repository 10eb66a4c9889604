"""``init_backbone``: ImageNet VGG16 weights through torchvision's weights API, or a file.

``imagenet`` means ``torchvision.models.VGG16_Weights.IMAGENET1K_V1``: the file
in TORCH_HOME's cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) when
it is there, else downloaded there; offline, one line says where to put it.
Either way the file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint import WeightsError, vgg16_backbone_state
from ..model import FCNConfig

IMAGENET = "imagenet"


def imagenet_weights_path() -> tuple[Path, str]:
    """Where torchvision keeps VGG16's ImageNet weights, and where they come from."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def fetch_imagenet_weights() -> Path:
    path, url = imagenet_weights_path()
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)  # writes a temp file, then renames
    except Exception as e:  # offline, proxy, full disk: all end the same way for the user
        raise WeightsError(f"init_backbone imagenet: cannot download {url} ({type(e).__name__}); "
                           f"put that file at {path} (or set TORCH_HOME) and re-run") from None
    return path


def backbone_file(value: str) -> Path:
    """The VGG16 file for ``init_backbone = "imagenet"`` or a path; checked before any data is read."""
    return fetch_imagenet_weights() if value == IMAGENET else Path(value)


def backbone_state(path: Path, config: FCNConfig) -> dict:
    """FCN-named conv and fc6/fc7 tensors from the VGG16 file."""
    return vgg16_backbone_state(path, config)
