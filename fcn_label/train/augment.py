"""Training augmentation: image and mask always go through the same geometry.

Randomness comes from a ``random.Random`` seeded per (seed, epoch, index) by the
dataset, so a sample's augmentation is the same in any worker and after --resume.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Random scale, crop (image padded with the mean, mask with ignore), flip, colour, blur."""

    crop: tuple[int, int] = (288, 384)  # (H, W)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.3  # brightness / contrast / saturation amplitude
    blur_p: float = 0.2
    ignore_index: int = 255

    def __call__(self, img: torch.Tensor, mask: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` float (3, H, W) in [0, 1], ``mask`` long (H, W)."""
        s = math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        H, W = img.shape[-2:]
        h, w = max(1, round(H * s)), max(1, round(W * s))
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        ch, cw = self.crop
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            # pad with 0.5 grey (close to the ImageNet mean) and the ignore label
            img = F.pad(img, (0, pw, 0, ph), value=0.45)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
        h, w = img.shape[-2:]
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        img, mask = img[:, y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        if self.jitter:
            j = self.jitter
            img = img * rng.uniform(1 - j, 1 + j)  # brightness
            m = img.mean()
            img = (img - m) * rng.uniform(1 - j, 1 + j) + m  # contrast
            g = img.mean(0, keepdim=True)
            img = (img - g) * rng.uniform(1 - j, 1 + j) + g  # saturation
            img = img.clamp(0, 1)
        if self.blur_p and rng.random() < self.blur_p:
            sigma = rng.uniform(0.3, 1.5)
            k = 2 * math.ceil(2 * sigma) + 1
            ax = torch.arange(k, dtype=img.dtype) - k // 2
            g1 = torch.exp(-(ax**2) / (2 * sigma**2))
            g1 = g1 / g1.sum()
            img = F.conv2d(F.pad(img[None], (k // 2,) * 4, mode="reflect"), g1.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
            img = F.conv2d(img, g1.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)[0]
        return img.contiguous(), mask.contiguous()
