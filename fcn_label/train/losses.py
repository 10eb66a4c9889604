"""The per-pixel objectives beyond plain cross-entropy: OHEM's hard-pixel selection and the Lovász-softmax loss.

Both trade some of the recall that class weights push for against precision on
thin classes: OHEM (Shrivastava et al.; the pixel form of mmsegmentation's
``OHEMPixelSampler``) spends the loss on the pixels the model still gets wrong,
and Lovász-softmax (Berman et al., "The Lovász-Softmax loss", CVPR 2018)
optimises a convex surrogate of the per-class Jaccard index (IoU) directly.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ohem_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, thresh: float,
                min_kept: int) -> torch.Tensor:
    """``target`` with every pixel but the hard ones set to ``ignore_index``.

    Hard: the softmax probability of its true class is below ``thresh``; when
    fewer than ``min_kept`` pixels per image are that hard, the threshold rises
    to keep the ``min_kept`` hardest (mmsegmentation's rule: the threshold is
    ``max(thresh, p_k)`` with ``p_k`` the (k+1)-th lowest probability).
    """
    valid = target != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        return target
    safe = torch.where(valid, target, torch.zeros_like(target))
    prob = logits.float().softmax(1).gather(1, safe[:, None])[:, 0]
    kept = min(min_kept * target.shape[0], n_valid - 1)
    threshold = max(float(prob[valid].sort().values[kept]), thresh)
    return torch.where(valid & (prob < threshold), target, torch.full_like(target, ignore_index))


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(gt_sorted) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Lovász-softmax over the valid pixels of a batch (probs (B, C, H, W), target (B, H, W)), averaged over
    the classes present in ``target``; 0 for a batch with no valid pixel."""
    c = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    valid = t != ignore_index
    p, t = p[valid], t[valid]
    losses = []
    for k in range(c):
        fg = (t == k).to(p.dtype)
        if not fg.any():
            continue
        errors = (fg - p[:, k]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0
