"""Pick the predicted images most worth a person's time (``fcn-label select``).

* ``uncertainty``: highest doubt first, doubt = 1 - the image's mean confidence (the
  probability of the chosen class, averaged over pixels). It is read from the confidence
  map ``confidence/<name>.png`` when predict ran with --probs (8-bit, so within 0.002),
  else from predictions.csv; ties go to the larger low-confidence fraction, then to the
  path. Entropy and margin need all class probabilities, which predict does not keep.
* ``diverse``: greedy; each step takes the image with the largest
  ``doubt / max doubt + diversity * sum over its classes of rarity(c) / (1 + picked(c))``,
  where rarity(c) = log(N / images predicting c) / log(N) and picked(c) counts the images
  already chosen that show c. Doubtful images still lead, but a rare class seen in few
  images is not left out, and a class already covered counts less each time.
* ``random``: a seeded sample, the baseline the other two must beat.

The result is a list file of input paths, one per line, that predict, finetune (with
``masks``: ``image mask`` lines) and export --only read.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError
from .images import write_text_atomic
from .predfolder.reader import Report, Row, read_report

STRATEGIES = ("uncertainty", "diverse", "random")


@dataclass
class Choice:
    row: Row
    doubt: float  # 1 - mean confidence
    low: float  # fraction of pixels below the low-confidence threshold
    gain: float  # what the strategy maximised when it took this image (doubt for uncertainty, 0 for random)
    source: str  # "confidence map" or "predictions.csv"


def doubts(folder: Report, low_threshold: float = 0.5) -> tuple[list[tuple[Row, float, float, str]], list[str]]:
    """(row, 1 - mean confidence, low-confidence fraction, source) for every image; unreadable maps fall back to the CSV."""
    out, problems = [], []
    for row in folder.rows:
        p = folder.confidence(row)
        if p is not None:
            try:  # one boundary per file: a damaged map costs its precision, not the run
                with Image.open(p) as im:
                    c = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
                out.append((row, 1.0 - float(c.mean()), float((c < low_threshold).mean()), "confidence map"))
                continue
            except Exception as e:
                problems.append(f"{p}: unreadable confidence map ({type(e).__name__}: {e}); used predictions.csv "
                                "instead; re-run predict --probs --overwrite to rewrite it")
        out.append((row, 1.0 - row.mean_confidence, row.low_confidence_fraction, "predictions.csv"))
    return out, problems


def select(folder: Report, k: int, strategy: str = "uncertainty", seed: int = 0, diversity: float = 1.0,
           min_fraction: float = 0.001) -> tuple[list[Choice], list[str]]:
    """The ``k`` images to label next, best first (all of them when the pool is smaller)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if k < 1:
        raise ValueError(f"--k {k}: give a positive number of images")
    scored, problems = doubts(folder)
    k = min(k, len(scored))
    if strategy == "random":
        pool = sorted(scored, key=lambda t: t[0].rel_input)
        picked = random.Random(seed).sample(pool, k)
        return [Choice(r, d, lo, 0.0, s) for r, d, lo, s in picked], problems
    order = sorted(scored, key=lambda t: (-t[1], -t[2], t[0].rel_input))
    if strategy == "uncertainty":
        return [Choice(r, d, lo, d, s) for r, d, lo, s in order[:k]], problems
    # diverse
    n = len(scored)
    present = [{c for c, f in r.classes.items() if f >= min_fraction} for r, *_ in scored]
    counts: dict[str, int] = {}
    for cs in present:
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    rarity = {c: (math.log(n / m) / math.log(n) if n > 1 else 0.0) for c, m in counts.items()}
    dmax = max((d for _, d, _, _ in scored), default=0.0) or 1.0
    picked_count = {c: 0 for c in counts}
    left = list(range(n))
    chosen: list[Choice] = []
    for _ in range(k):
        def gain(i: int) -> float:
            return scored[i][1] / dmax + diversity * sum(rarity[c] / (1 + picked_count[c]) for c in present[i])
        best = min(left, key=lambda i: (-gain(i), -scored[i][1], scored[i][0].rel_input))
        r, d, lo, s = scored[best]
        chosen.append(Choice(r, d, lo, gain(best), s))
        left.remove(best)
        for c in present[best]:
            picked_count[c] += 1
    return chosen, problems


def list_lines(folder: Report, choices: list[Choice], list_file: Path, images: Path | None = None,
               masks: Path | None = None) -> tuple[list[str], list[str]]:
    """One input path per line (``image mask`` with ``masks``), as list readers resolve them.

    Predict and finetune resolve a list's relative paths against the list's folder, export
    --only against the current folder: paths are relative when the list is written in the
    current folder (both readers agree then) and absolute otherwise.
    """
    here = Path.cwd().resolve()
    base = list_file.resolve().parent
    problems = []

    def shown(p: Path) -> str:
        p = p.resolve()
        return os.path.relpath(p, here) if base == here else str(p)

    lines = []
    for ch in choices:
        photo = folder.find_photo(ch.row, images)
        if photo is None:
            problems.append(f"{ch.row.input}: input image not found from here; listed as predict recorded it "
                            "(pass --images ROOT, the folder given to predict)")
            img = ch.row.input if base == here or Path(ch.row.input).is_absolute() else str(Path(ch.row.input).absolute())
        else:
            img = shown(photo)
        if masks is not None:
            m = next((masks / f"{ch.row.rel}{e}" for e in (".png", ".bmp", ".tif", ".tiff")
                      if (masks / f"{ch.row.rel}{e}").is_file()), None)
            if m is None:
                problems.append(f"{masks / (ch.row.rel + '.png')}: no mask for {ch.row.input}; left out of the list")
                continue
            pair = (img, shown(m))
            if any(any(ch.isspace() for ch in x) for x in pair):
                problems.append(f"{pair[0]}: a path with spaces cannot go on an 'image mask' line; rename it")
                continue
            img = " ".join(pair)
        lines.append(img)
    return lines, problems


def write_selection(pred_dir: str | os.PathLike, out: str | os.PathLike, k: int, strategy: str = "uncertainty",
                    seed: int = 0, images: str | os.PathLike | None = None, masks: str | os.PathLike | None = None,
                    diversity: float = 1.0, min_fraction: float = 0.001) -> tuple[list[Choice], list[str]]:
    """Select and write the list file ``out`` atomically; returns the choices and the problems met."""
    folder = read_report(pred_dir)
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name such as next.txt")
    images = Path(images) if images is not None else None
    masks = Path(masks) if masks is not None else None
    for p, what in ((images, "--images"), (masks, "--masks")):
        if p is not None and not p.is_dir():
            raise InputError(f"{what} {p}: folder not found")
    if not folder.rows:
        raise InputError(f"{folder.layout.predictions_csv}: no predicted image to choose from")
    choices, problems = select(folder, k, strategy, seed, diversity, min_fraction)
    lines, more = list_lines(folder, choices, out, images, masks)
    write_text_atomic(out, "".join(f"{line}\n" for line in lines))
    return choices, folder.problems + problems + more
