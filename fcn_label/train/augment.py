"""Training augmentation with torchvision.transforms.v2: image and mask go through the same geometry.

The mask is a ``tv_tensors.Mask``, so v2 resizes it with nearest neighbour and
pads it with the ignore label while the image is resized bilinearly (antialiased
when shrinking) and padded with grey. Randomness comes from a ``random.Random``
the dataset seeds per (seed, epoch, index): the transforms draw from a torch
generator seeded from it inside ``fork_rng``, so a sample's augmentation is the
same in any worker and after --resume, and the global RNG is left alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

PAD_GREY = 0.45  # close to the ImageNet mean: padding looks like "nothing" to the network


@dataclass
class Augment:
    """Random scale, crop (image padded with grey, mask with ignore), flip, colour jitter, blur."""

    crop: tuple[int, int] = (288, 384)  # (H, W)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.3  # brightness / contrast / saturation amplitude
    blur_p: float = 0.2
    ignore_index: int = 255

    def transforms(self, size: tuple[int, int]) -> v2.Compose:
        """The composed pipeline for an image of ``size`` (H, W); scale is relative to it."""
        short = min(size)  # RandomResize sets the shorter side: a scale of the image, aspect kept
        lo, hi = max(1, round(short * self.scale[0])), max(1, round(short * self.scale[1]))
        steps = [
            v2.RandomResize(lo, hi + 1, antialias=True),
            v2.RandomCrop(self.crop, pad_if_needed=True,
                          fill={tv_tensors.Image: PAD_GREY, tv_tensors.Mask: self.ignore_index}),
        ]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.jitter:
            j = self.jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        if self.blur_p:
            steps.append(v2.RandomApply([v2.GaussianBlur(7, sigma=(0.3, 1.5))], p=self.blur_p))
        return v2.Compose(steps)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` float (3, H, W) in [0, 1], ``mask`` long (H, W); the same ``rng`` state gives the same result."""
        pipeline = self.transforms(tuple(img.shape[-2:]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.getrandbits(63))
            out_img, out_mask = pipeline(tv_tensors.Image(img), tv_tensors.Mask(mask))
        return out_img.as_subclass(torch.Tensor).clamp(0, 1).contiguous(), out_mask.as_subclass(torch.Tensor).contiguous()
