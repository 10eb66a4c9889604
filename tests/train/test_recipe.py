"""The recipe keys of issue 24, each against an independent reference: Lovász-softmax against the Choquet
integral of the Jaccard loss, OHEM against cross-entropy over hand-picked pixels, powered and decaying
class weights against hand-computed values, and the augmentation keys reaching the augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_label.train import Trainer, TrainConfig
from fcn_label.train.augment import Augment
from fcn_label.train.losses import lovasz_softmax, ohem_target
from fcn_label.train.setup import class_weights, datasets

from support.synth import tiny_config, write_list_dataset

IGNORE = 255


def _jaccard_loss(fg: np.ndarray, mistakes: np.ndarray) -> float:
    """Berman et al.'s set function: |M| / |F u M| for the mispredicted set M of a class with foreground F."""
    union = (fg | mistakes).sum()
    return mistakes.sum() / union if union else 0.0


def _choquet(fg: np.ndarray, errors: np.ndarray) -> float:
    """The Lovász extension as the Choquet integral: sum over the error levels of (level step) x loss of the set
    of pixels at or above that level."""
    total, below = 0.0, 0.0
    for level in np.unique(errors):
        if level <= 0:
            continue
        total += (level - below) * _jaccard_loss(fg, errors >= level)
        below = level
    return total


def _lovasz_reference(probs: np.ndarray, target: np.ndarray) -> float:
    p = probs.transpose(0, 2, 3, 1).reshape(-1, probs.shape[1])
    t = target.reshape(-1)
    p, t = p[t != IGNORE], t[t != IGNORE]
    per_class = [_choquet(t == c, np.abs((t == c).astype(float) - p[:, c])) for c in range(p.shape[1]) if (t == c).any()]
    return float(np.mean(per_class))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_softmax_is_the_lovasz_extension_of_the_jaccard_loss(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (2, 3, 5), generator=g)  # class 3 never present: left out of the mean
    target[0, 0, :2] = IGNORE
    probs = logits.softmax(1)
    got = lovasz_softmax(probs, target, IGNORE).item()
    assert got == pytest.approx(_lovasz_reference(probs.numpy(), target.numpy()), abs=1e-12)


def test_lovasz_is_zero_for_a_perfect_prediction_and_for_no_valid_pixel():
    target = torch.tensor([[[0, 1], [2, 1]]])
    probs = F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    assert lovasz_softmax(probs, target, IGNORE).item() == 0.0
    assert lovasz_softmax(probs, torch.full_like(target, IGNORE), IGNORE).item() == 0.0


def _trainer(**kw) -> Trainer:
    cfg = TrainConfig(data="x", ignore_index=IGNORE, **kw)
    cfg.validate()
    t = Trainer(cfg, log=lambda m: None)
    t.class_weight, t.world, t.step, t.total_steps = None, 1, 0, 10
    return t


def test_ohem_is_cross_entropy_over_the_hardest_pixels():
    # one image, 1 x 6 pixels, 2 classes; true-class probabilities made by hand
    p_true = torch.tensor([0.9, 0.2, 0.6, 0.95, 0.4, 0.1], dtype=torch.float64)
    target = torch.tensor([[[0, 1, 0, 1, 0, 1]]])
    logit_true = torch.log(p_true / (1 - p_true))  # 2 classes: softmax of (logit, 0) gives p
    logits = torch.zeros(1, 2, 1, 6, dtype=torch.float64)
    for i in range(6):
        logits[0, target[0, 0, i], 0, i] = logit_true[i]
    target_ign = target.clone()
    target_ign[0, 0, 5] = IGNORE  # ignored: never kept, though the hardest

    def ce_over(idx):
        return F.cross_entropy(logits[0, :, 0, idx].T, target[0, 0, idx]).item()

    # the threshold keeps every pixel below it (0.7: pixels 1, 2, 4), min_kept does not bind
    loss, shown = _trainer(criterion="ohem", ohem_thresh=0.7, ohem_min_kept=1)._loss(logits, target_ign)
    assert loss.item() == pytest.approx(ce_over([1, 2, 4]), rel=1e-6) and shown.item() == loss.item()
    # a strict threshold keeps fewer than min_kept: the min_kept hardest are kept instead (pixels 1, 4)
    loss, _ = _trainer(criterion="ohem", ohem_thresh=0.1, ohem_min_kept=2)._loss(logits, target_ign)
    assert loss.item() == pytest.approx(ce_over([1, 4]), rel=1e-6)
    kept = ohem_target(logits, target_ign, IGNORE, 0.1, 2)
    assert kept[0, 0].tolist() == [IGNORE, 1, IGNORE, IGNORE, 0, IGNORE]


def test_lovasz_mix_and_the_default_criterion():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    ce = F.cross_entropy(logits, target).item()
    lov = _lovasz_reference(logits.softmax(1).numpy(), target.numpy())
    assert _trainer()._loss(logits, target)[0].item() == pytest.approx(ce, rel=1e-6)
    assert _trainer(criterion="lovasz")._loss(logits, target)[0].item() == pytest.approx(lov, rel=1e-6)
    mixed = _trainer(criterion="lovasz", loss_mix=0.25)._loss(logits, target)[0].item()
    assert mixed == pytest.approx(0.75 * ce + 0.25 * lov, rel=1e-6)


def test_class_weight_power_and_the_sqrt_median_default():
    counts = np.array([1000, 100, 10], np.int64)  # shares 1000/1110 ...; median share 100/1110: weights 0.1, 1, 10
    names = ["a", "b", "c"]
    cpu = torch.device("cpu")

    def w(**kw):
        cfg = TrainConfig(data="x", **kw)
        return class_weights(cfg, counts, names, cpu, lambda m: None).double().numpy()

    assert np.allclose(w(class_weights="median"), [0.1, 1, 10])
    assert np.allclose(w(class_weights="sqrt-median"), [0.1 ** 0.5, 1, 10 ** 0.5])
    assert np.allclose(w(class_weights="median", class_weight_power=0.25), [0.1 ** 0.25, 1, 10 ** 0.25])
    assert np.allclose(w(class_weights="median", class_weight_power=0.0), [1, 1, 1])
    assert class_weights(TrainConfig(data="x", class_weights="none"), counts, names, cpu, print) is None


def test_class_weights_decay_linearly_to_none_over_the_run():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (1, 3, 3), generator=g)
    base = torch.tensor([0.5, 2.0])  # float32, as built
    t = _trainer(class_weight_decay=True)
    t.class_weight = base
    for step, want in ((0, [0.5, 2.0]), (5, [0.75, 1.5]), (10, [1.0, 1.0]), (12, [1.0, 1.0])):
        t.step = step
        assert t._class_weight_now().tolist() == want
    t.step = 10  # the last step: uniform weights are the plain loss
    assert t._loss(logits, target)[0].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    t.step = 0
    weighted = F.cross_entropy(logits, target, weight=base.double()).item()  # torch's weighted mean
    assert t._loss(logits, target)[0].item() == pytest.approx(weighted, rel=1e-6)
    off = _trainer()
    off.class_weight, off.step = base, 5
    assert off._class_weight_now() is base  # without the key the weights stay as built


def test_new_keys_default_to_the_behaviour_before_them(tmp_path):
    """Runs made before the recipe keys existed are reproduced: their defaults are the old fixed values."""
    cfg = TrainConfig(data="x")
    aug = Augment()
    assert (cfg.jitter, cfg.blur_p, cfg.hflip) == (aug.jitter, aug.blur_p, aug.flip)
    assert (cfg.criterion, cfg.class_weight_power, cfg.class_weight_decay) == ("ce", 1.0, False)
    data = write_list_dataset(tmp_path / "d", n=2)
    train_ds, _ = datasets(tiny_config(data, tmp_path / "run", ignore_index=IGNORE, jitter=0.1, blur_p=0.0,
                                       hflip=False), print)
    assert (train_ds.augment.jitter, train_ds.augment.blur_p, train_ds.augment.flip) == (0.1, 0.0, False)


@pytest.mark.parametrize("kw, message", [
    (dict(criterion="ohem", loss="sum"), "criterion ohem is a mean over pixels"),
    (dict(loss_mix=1.5), "loss_mix must be in [0, 1]"),
    (dict(ohem_thresh=0.0), "ohem_thresh must be in (0, 1]"),
    (dict(class_weight_power=-1.0), "class_weight_power must be 0 or more"),
    (dict(blur_p=2.0), "blur_p in [0, 1]"),
])
def test_impossible_recipe_values_are_refused(kw, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(data="x", **kw).validate()
