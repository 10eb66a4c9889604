"""Pairing ground truth with predictions (or images) by name.

Exact relative path without suffix first ("val/0001" <-> "val/0001"); what is
left is paired when one name is a trailing part of the other ("val/0001" <->
"0001") and that is unambiguous. Whatever stays unpaired is reported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable


def _tails(key: str) -> list[str]:
    parts = key.split("/")
    return ["/".join(parts[i:]) for i in range(1, len(parts))]


def match_keys(gt_keys: Iterable[str], pred_keys: Iterable[str]) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
    """Pair keys: exact first, then by unambiguous trailing path components.

    Returns ``{gt_key: pred_key}``, the unmatched ground-truth keys, and
    ``(pred_key, reason)`` for each unmatched prediction.
    """
    gt_keys, pred_keys = list(gt_keys), list(pred_keys)
    pred_set = set(pred_keys)
    matched = {k: k for k in gt_keys if k in pred_set}
    rest_gt = [k for k in gt_keys if k not in matched]
    rest_pred = [k for k in pred_keys if k not in matched]
    # "val/0001" vs "0001": index both sides by every trailing part of the name
    gt_by_tail: dict[str, list[str]] = defaultdict(list)
    for g in rest_gt:
        for t in [g] + _tails(g):
            gt_by_tail[t].append(g)
    rest_gt_set = set(rest_gt)
    claimed: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for p in rest_pred:
        cands = set(gt_by_tail.get(p, ())) | {t for t in _tails(p) if t in rest_gt_set}
        if len(cands) == 1:
            g = cands.pop()
            if g in claimed:
                extra.append((p, f"ground truth {g} is already paired with prediction {claimed[g]}"))
            else:
                claimed[g] = p
        elif cands:
            extra.append((p, f"name fits several ground-truth files ({', '.join(sorted(cands)[:3])}); "
                             "keep the same relative paths on both sides"))
        else:
            extra.append((p, "no ground truth with this name"))
    matched.update(claimed)
    missing = [g for g in rest_gt if g not in claimed]
    return matched, missing, extra
