"""Paired augmentation: image and mask go through the same geometry."""

from __future__ import annotations

import random

import numpy as np
import torch

from fcn_label.train.augment import Augment

from support.synth import make_arrays


def test_augmentation_moves_image_and_mask_together():
    """Scale, crop and flip the same way: the class read back from each pixel's colour matches the mask."""
    _, img, mask = make_arrays(1, classes=3, seed=5)[0]
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    img = colours[mask]
    aug = Augment(crop=(40, 56), scale=(0.6, 1.8), jitter=0.0, blur_p=0.0, ignore_index=255)
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    m = torch.from_numpy(mask.astype(np.int64))
    padded = 0
    for seed in range(12):
        a_img, a_mask = aug(t, m, random.Random(seed))
        assert a_img.shape == (3, 40, 56) and a_mask.shape == (40, 56)
        a_mask = a_mask.numpy()
        assert set(np.unique(a_mask)) <= {0, 1, 2, 255}  # nearest: no blended labels
        valid = a_mask != 255
        read = np.abs(a_img.permute(1, 2, 0).numpy()[:, :, None, :] * 255 - colours[None, None]).sum(-1).argmin(-1)
        assert (read[valid] == a_mask[valid]).mean() > 0.9, seed  # bilinear image edges may differ by a pixel
        # the source has no ignore pixels: every ignore pixel is padding, grey in the image
        assert np.allclose(a_img.numpy()[:, ~valid], 0.45)
        padded += int((~valid).any())
    assert 0 < padded < 12  # both small (padded) and large (cropped) scales were drawn
