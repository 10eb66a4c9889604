"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell, CVPR 2015).

One network class covers all three strides and both the faithful VGG16 nets and
the width-scaled compact variant we ship, so the backbone is written once.

Parameter names follow the paper's Caffe prototxts as ported by
wkentaro/pytorch-fcn (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``,
``score_fr``, ``score_pool4``, ``score_pool3``, ``upscore2``, ``upscore8``,
``upscore_pool4``, ``upscore16``, ``upscore``), so that project's published
``.pth`` files load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .choices import ARCHS  # noqa: E402  (torch-free home, for --help)

# (number of convs, channels) of VGG16's five blocks.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


@dataclass(frozen=True)
class FCNConfig:
    """Everything needed to rebuild the network; stored in every checkpoint.

    ``padding="caffe"`` is the reference net: conv1_1 pads by 100 so any input
    size survives five poolings and the 7x7 fc6, and the outputs are cropped at
    the reference offsets. ``padding="same"`` pads the input to a multiple of 32
    instead and uses a padded fc6: the same topology at about half the compute
    at 480x360, used by the compact model.
    """

    arch: Literal["fcn32s", "fcn16s", "fcn8s"] = "fcn8s"
    num_classes: int = 21
    width: float = 1.0
    fc_channels: int = 4096
    batch_norm: bool = False
    padding: Literal["caffe", "same"] = "caffe"
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.padding not in ("caffe", "same"):
            raise ValueError(f"unknown padding {self.padding!r}; choose 'caffe' or 'same'")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FCNConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def bilinear_kernel(in_channels: int, out_channels: int, size: int) -> torch.Tensor:
    """Weights that make a transposed convolution perform bilinear upsampling (paper, sec. 3.3)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    weight = np.zeros((in_channels, out_channels, size, size), dtype=np.float64)
    for i in range(min(in_channels, out_channels)):
        weight[i, i] = filt
    return torch.from_numpy(weight).float()


# Reference crop offsets of the Caffe nets (pytorch-fcn uses the same numbers).
_CAFFE_OFFSETS = {
    "fcn32s": {"final": 19},
    "fcn16s": {"pool4": 5, "final": 27},
    "fcn8s": {"pool4": 5, "pool3": 9, "final": 31},
}
# With padding="same" every map is aligned; crops only undo the transposed
# convolutions' own border (k - s) / 2.
_SAME_OFFSETS = {
    "fcn32s": {"final": 16},
    "fcn16s": {"pool4": 0, "final": 8},
    "fcn8s": {"pool4": 0, "pool3": 0, "final": 4},
}
_FINAL_STRIDE = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}
_FINAL_NAME = {"fcn32s": "upscore", "fcn16s": "upscore16", "fcn8s": "upscore8"}


class FCN(nn.Module):
    """VGG16 made fully convolutional with optional pool4 / pool3 skips."""

    def __init__(self, config: FCNConfig | None = None, **kwargs) -> None:
        super().__init__()
        config = config or FCNConfig(**kwargs)
        self.config = config
        c, n = config, config.num_classes
        self.block_sizes = [k for k, _ in VGG16_BLOCKS]
        in_ch = 3
        for b, (convs, ch) in enumerate(VGG16_BLOCKS, start=1):
            ch = max(8, int(round(ch * c.width)))
            for i in range(1, convs + 1):
                pad = 100 if (b, i) == (1, 1) and c.padding == "caffe" else 1
                setattr(self, f"conv{b}_{i}", nn.Conv2d(in_ch, ch, 3, padding=pad, bias=not c.batch_norm))
                if c.batch_norm:
                    setattr(self, f"bn{b}_{i}", nn.BatchNorm2d(ch))
                setattr(self, f"relu{b}_{i}", nn.ReLU(inplace=True))
                in_ch = ch
            setattr(self, f"pool{b}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            if b == 3:
                pool3_ch = ch
            if b == 4:
                pool4_ch = ch
        fc_pad = 3 if c.padding == "same" else 0
        self.fc6 = nn.Conv2d(in_ch, c.fc_channels, 7, padding=fc_pad, bias=not c.batch_norm)
        if c.batch_norm:
            self.bn6 = nn.BatchNorm2d(c.fc_channels)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(c.dropout)
        self.fc7 = nn.Conv2d(c.fc_channels, c.fc_channels, 1, bias=not c.batch_norm)
        if c.batch_norm:
            self.bn7 = nn.BatchNorm2d(c.fc_channels)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(c.dropout)
        self.score_fr = nn.Conv2d(c.fc_channels, n, 1)
        if c.arch == "fcn32s":
            self.upscore = nn.ConvTranspose2d(n, n, 64, stride=32, bias=False)
        else:
            self.score_pool4 = nn.Conv2d(pool4_ch, n, 1)
            self.upscore2 = nn.ConvTranspose2d(n, n, 4, stride=2, bias=False)
            if c.arch == "fcn16s":
                self.upscore16 = nn.ConvTranspose2d(n, n, 32, stride=16, bias=False)
            else:
                self.score_pool3 = nn.Conv2d(pool3_ch, n, 1)
                self.upscore_pool4 = nn.ConvTranspose2d(n, n, 4, stride=2, bias=False)
                self.upscore8 = nn.ConvTranspose2d(n, n, 16, stride=8, bias=False)
        self._offsets = (_CAFFE_OFFSETS if c.padding == "caffe" else _SAME_OFFSETS)[c.arch]
        self.reset_parameters()

    @property
    def final_upsample(self) -> nn.ConvTranspose2d:
        return getattr(self, _FINAL_NAME[self.config.arch])

    @classmethod
    def empty(cls, config: FCNConfig, device: str | torch.device = "cpu") -> "FCN":
        """Parameters allocated on ``device`` but not initialised, for a caller that loads weights next:
        random initialisation would be wasted work (and on the CPU it imports torch._dynamo, which is slow)."""
        with torch.device("meta"):
            model = cls(config)
        return model.to_empty(device=device)

    def reset_parameters(self) -> None:
        """Paper init: score layers zero, upsampling bilinear, convs Kaiming (scratch)."""
        if next(self.parameters()).is_meta:  # shapes only (FCN.empty, name checks): nothing to initialise
            return
        for name, m in self.named_modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(bilinear_kernel(m.in_channels, m.out_channels, m.kernel_size[0]))
            elif isinstance(m, nn.Conv2d):
                if name.startswith("score"):
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def fold_batch_norm(self) -> "FCN":
        """Fold each BatchNorm's running statistics into the convolution before it, in place.

        For inference only (the result no longer trains like the original): the
        same outputs to float rounding with one pass over each feature map fewer,
        about 5-10% faster on CPU. The BN modules become identities, so the
        forward pass and the parameter names of the convolutions stay.
        """
        if not self.config.batch_norm:
            return self
        for name, bn in list(self.named_children()):
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            conv_name = {"bn6": "fc6", "bn7": "fc7"}.get(name, name.replace("bn", "conv"))
            conv = getattr(self, conv_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            setattr(self, name, nn.Identity())
        return self

    def _block(self, h: torch.Tensor, b: int) -> torch.Tensor:
        for i in range(1, self.block_sizes[b - 1] + 1):
            h = getattr(self, f"conv{b}_{i}")(h)
            if self.config.batch_norm:
                h = getattr(self, f"bn{b}_{i}")(h)
            h = getattr(self, f"relu{b}_{i}")(h)
        return getattr(self, f"pool{b}")(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, C, H, W) at exactly the input's H x W."""
        c, off = self.config, self._offsets
        H, W = x.shape[-2:]
        if c.padding == "same":
            ph, pw = (-H) % 32, (-W) % 32
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        h = x
        for b in (1, 2):
            h = self._block(h, b)
        pool3 = h = self._block(h, 3)
        pool4 = h = self._block(h, 4)
        h = self._block(h, 5)
        h = self.fc6(h)
        if c.batch_norm:
            h = self.bn6(h)
        h = self.drop6(self.relu6(h))
        h = self.fc7(h)
        if c.batch_norm:
            h = self.bn7(h)
        h = self.drop7(self.relu7(h))
        h = self.score_fr(h)
        if c.arch != "fcn32s":
            h = self._fuse(self.upscore2(h), self.score_pool4(pool4), off["pool4"])
            if c.arch == "fcn8s":
                h = self._fuse(self.upscore_pool4(h), self.score_pool3(pool3), off["pool3"])
        h = self.final_upsample(h)
        o = off["final"]
        return h[:, :, o : o + H, o : o + W].contiguous()


    def _fuse(self, up: torch.Tensor, skip: torch.Tensor, offset: int) -> torch.Tensor:
        """Sum an upsampled coarse score map with a skip score map (Caffe's Crop + Eltwise).

        Caffe padding: the skip map is larger and is cropped at the reference offset.
        Same padding: the skip map is exactly aligned and the upsampled map carries
        the transposed convolution's one-pixel border, which is cropped instead.
        """
        if self.config.padding == "caffe":
            h, w = up.shape[-2:]
            return up + skip[:, :, offset : offset + h, offset : offset + w]
        h, w = skip.shape[-2:]
        return up[:, :, 1 : 1 + h, 1 : 1 + w] + skip
