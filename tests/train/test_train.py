"""Training engine: learning, exact resume, initialisation paths, class-count and staged changes, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_label.model import FCN, FCNConfig, bilinear_kernel
from fcn_label.train import PRESETS, Trainer, TrainConfig
from fcn_label.checkpoint import CAFFE_BGR, Checkpoint, IMAGENET, load_checkpoint, save_checkpoint

from support.synth import tiny_config, write_list_dataset
from fcn_label.cli import run_cli
from support.helpers import write_vgg16_file

REPO = Path(__file__).resolve().parents[2]


def _train_state(path: Path) -> dict:
    return load_checkpoint(path).train_state


def _assert_same_tensors(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k


def _dataset_loss(trainer: Trainer, model: torch.nn.Module) -> float:
    """Mean per-pixel cross-entropy of ``model`` over the un-augmented training images."""
    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(len(trainer.train_ds)):
            img, mask = trainer.train_ds.load(i)
            x = trainer.norm.apply(torch.from_numpy(img).permute(2, 0, 1)[None])
            y = torch.from_numpy(mask.astype(np.int64))[None]
            losses.append(F.cross_entropy(model(x), y, ignore_index=trainer.cfg.ignore_index).item())
    return float(np.mean(losses))


def test_a_few_steps_reduce_the_loss(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    cfg = tiny_config(data, tmp_path / "run", lr=1e-2, epochs=8, ema=0.0, class_weights="none", warmup_epochs=0)
    before = Trainer(cfg, log=lambda m: None)
    before.setup()
    initial = _dataset_loss(before, before.model)
    assert initial == pytest.approx(np.log(3), abs=1e-4)  # zero-initialised score layers: uniform prediction

    t = Trainer(cfg, log=lambda m: None)
    t.run()
    final = _dataset_loss(t, t.model)
    assert final < 0.6 * initial, (initial, final)
    assert t.step == 8 * 4
    losses = [r["loss"] for r in t.history]
    assert len(losses) == 8 and losses[-1] < losses[0]


def _resume_config(data, val, out, **kw):
    # the modern recipe in small: BN, dropout, EMA, warm-up + poly, class weights, scale
    # augmentation, gradient accumulation, validation (per epoch and mid-epoch), mid-epoch checkpoints
    return tiny_config(data, out, val=str(val), epochs=4, dropout=0.3, ema=0.9, accumulate=2, batch_size=1,
                       checkpoint_every_steps=3, val_every_steps=5, **kw)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    val = write_list_dataset(tmp_path / "d", n=2, seed=1, name="val")
    # 8 images, batch 1, accumulate 2 -> 4 steps per epoch; 10 of the schedule's 16 steps
    full = Trainer(_resume_config(data, val, tmp_path / "full", max_steps=10), log=lambda m: None)
    full.run()

    part = Trainer(_resume_config(data, val, tmp_path / "part", max_steps=6), log=lambda m: None)
    part.run()
    ts = _train_state(tmp_path / "part" / "last.pt")
    assert (ts["epoch"], ts["step"], ts["batch_in_epoch"]) == (1, 6, 4)  # stopped halfway through epoch 2

    logs = []
    resumed = Trainer(_resume_config(data, val, tmp_path / "part", max_steps=10), log=logs.append)
    resumed.run(resume=str(tmp_path / "part" / "last.pt"))
    assert any("resumed from" in m and "epoch 1 + 4 batches" in m for m in logs)
    assert not any("changed options" in m for m in logs)  # max_steps may change freely

    a, b = _train_state(tmp_path / "full" / "last.pt"), _train_state(tmp_path / "part" / "last.pt")
    assert (a["epoch"], a["step"], a["batch_in_epoch"]) == (b["epoch"], b["step"], b["batch_in_epoch"]) == (2, 10, 4)
    _assert_same_tensors(a["model"], b["model"], atol=1e-6)
    _assert_same_tensors(a["ema"], b["ema"], atol=1e-6)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        _assert_same_tensors(sa, sb, atol=1e-6)
    assert a["epoch_loss"][1] == b["epoch_loss"][1] == 4
    assert a["epoch_loss"][0] == pytest.approx(b["epoch_loss"][0], rel=1e-6)
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert [r["epoch"] for r in a["history"]] == [1, 1.25, 2, 2.5]  # steps 5 and 10 validated mid-epoch
    # the model actually moved: the comparison is not between two untouched initialisations
    fresh = FCN(FCNConfig.from_dict(load_checkpoint(tmp_path / "full" / "last.pt").config.to_dict()))
    assert not torch.allclose(fresh.state_dict()["conv1_1.weight"], a["model"]["conv1_1.weight"])


def test_resume_refuses_a_different_model(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=4)
    Trainer(tiny_config(data, tmp_path / "run", epochs=1), log=lambda m: None).run()
    other = Trainer(tiny_config(data, tmp_path / "run", epochs=2, width=0.125), log=lambda m: None)
    with pytest.raises(Exception, match="does not fit this run's model.*config.json"):
        other.run(resume=str(tmp_path / "run" / "last.pt"))


def _small_checkpoint(path: Path, arch: str, num_classes: int, seed: int = 0) -> Checkpoint:
    """A small trained-looking checkpoint: every tensor random, so 'kept' is distinguishable from 'fresh'."""
    torch.manual_seed(seed)
    m = FCN(FCNConfig(arch=arch, num_classes=num_classes, width=0.0625, fc_channels=16, batch_norm=True,
                      padding="same", dropout=0.1))
    sd = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    ck = Checkpoint(m.config, sd, [f"c{i}" for i in range(num_classes)], [(i, i, i) for i in range(num_classes)])
    save_checkpoint(ck, path)
    return ck


def _setup(cfg: TrainConfig) -> tuple[Trainer, list[str]]:
    logs: list[str] = []
    t = Trainer(cfg, log=logs.append)
    t.setup()
    return t, logs


def test_class_count_change_keeps_backbone_and_reinitialises_score_layers(tmp_path):
    ck = _small_checkpoint(tmp_path / "three.pt", "fcn8s", 3)
    data = write_list_dataset(tmp_path / "d", n=4, classes=5)
    t, logs = _setup(tiny_config(data, tmp_path / "run", num_classes=5, init=str(tmp_path / "three.pt")))
    sd = t.model.state_dict()
    for k in ("conv1_1.weight", "conv5_3.weight", "bn3_2.running_var", "fc7.weight"):
        assert torch.equal(sd[k], ck.state_dict[k]), k
    assert sd["score_fr.weight"].shape == (5, 16, 1, 1)
    for k in ("score_fr", "score_pool4", "score_pool3"):
        assert not sd[f"{k}.weight"].any() and not sd[f"{k}.bias"].any(), k
    for k in ("upscore2", "upscore_pool4", "upscore8"):
        m = getattr(t.model, k)
        assert torch.equal(sd[f"{k}.weight"], bilinear_kernel(5, 5, m.kernel_size[0])), k
    msg = next(m for m in logs if m.startswith("init:"))
    assert "3 -> 5 classes" in msg and "re-initialised score_fr (zero)" in msg and "upscore8 (bilinear)" in msg


def test_staged_training_32s_to_16s_to_8s(tmp_path):
    ck32 = _small_checkpoint(tmp_path / "32s.pt", "fcn32s", 3)
    data = write_list_dataset(tmp_path / "d", n=4)
    t16, logs = _setup(tiny_config(data, tmp_path / "r16", arch="fcn16s", init=str(tmp_path / "32s.pt")))
    sd16 = t16.model.state_dict()
    assert t16.model.config.arch == "fcn16s"
    for k in ("conv1_1.weight", "fc6.weight", "bn7.running_mean", "score_fr.weight", "score_fr.bias"):
        assert torch.equal(sd16[k], ck32.state_dict[k]), k
    assert not sd16["score_pool4.weight"].any() and not sd16["score_pool4.bias"].any()
    assert torch.equal(sd16["upscore2.weight"], bilinear_kernel(3, 3, 4))
    msg = next(m for m in logs if m.startswith("init:"))
    assert "fcn32s -> fcn16s" in msg and "score_pool4 (zero)" in msg and "not used: upscore" in msg

    # 16s -> 8s keeps the learned 2x upsampling and pool4 scorer of the 16s net
    ck16 = _small_checkpoint(tmp_path / "16s.pt", "fcn16s", 3, seed=1)
    t8, logs = _setup(tiny_config(data, tmp_path / "r8", arch="fcn8s", init=str(tmp_path / "16s.pt")))
    sd8 = t8.model.state_dict()
    for k in ("score_pool4.weight", "upscore2.weight", "conv3_1.weight"):
        assert torch.equal(sd8[k], ck16.state_dict[k]), k
    assert not sd8["score_pool3.weight"].any()
    assert torch.equal(sd8["upscore8.weight"], bilinear_kernel(3, 3, 16))
    assert "not used: upscore16" in next(m for m in logs if m.startswith("init:"))

    # without --arch the checkpoint's architecture is kept
    same, _ = _setup(tiny_config(data, tmp_path / "r32", init=str(tmp_path / "32s.pt")))
    assert same.model.config.arch == "fcn32s"


def _expanded_state(shapes: dict[str, tuple], value_of) -> dict[str, torch.Tensor]:
    """Full-size tensors stored as one value each (stride 0): a full VGG16 in a few kilobytes."""
    return {k: value_of(k, s) for k, s in shapes.items()}


def test_init_from_torchvision_vgg16_file(tmp_path):
    row = write_vgg16_file(tmp_path / "vgg16.pth")
    assert (tmp_path / "vgg16.pth").stat().st_size < 1_000_000

    data = write_list_dataset(tmp_path / "d", n=2)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), num_classes=3, init_backbone=str(tmp_path / "vgg16.pth"),
                      ema=0.0, threads=1)
    cfg.apply_preset({"ema"})
    assert (cfg.width, cfg.fc_channels, cfg.batch_norm) == (1.0, 4096, False)  # implied by init_backbone
    t, logs = _setup(cfg)
    m = t.model
    assert torch.all(m.conv1_1.weight == 1) and torch.all(m.conv1_1.bias == -1)
    assert torch.all(m.conv4_1.weight == 8) and torch.all(m.conv5_3.weight == 13)
    assert torch.equal(m.fc6.weight[7], row.view(512, 7, 7))  # 25088 inputs folded into a 7x7 convolution
    assert torch.equal(m.fc6.bias, torch.arange(4096.0))
    assert torch.all(m.fc7.weight == 0.5)
    assert not m.score_fr.weight.any() and not m.score_pool3.weight.any()
    assert t.norm == IMAGENET
    assert any("VGG16 backbone" in msg for msg in logs)


def test_init_from_pytorch_fcn_state_dict(tmp_path):
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in FCN(FCNConfig(arch="fcn16s", num_classes=21)).state_dict().items()}
    values = {k: float(i + 1) for i, k in enumerate(shapes)}
    sd = {k: torch.full((), values[k]).expand(s) for k, s in shapes.items()}
    torch.save(sd, tmp_path / "fcn16s_from_caffe.pth")

    data = write_list_dataset(tmp_path / "d", n=2)
    t, logs = _setup(tiny_config(data, tmp_path / "run", init=str(tmp_path / "fcn16s_from_caffe.pth"), ema=0.0))
    m = t.model
    assert (m.config.arch, m.config.width, m.config.padding, m.config.num_classes) == ("fcn16s", 1.0, "caffe", 3)
    assert torch.all(m.conv1_1.weight == values["conv1_1.weight"])
    assert torch.all(m.fc6.weight == values["fc6.weight"])
    assert not m.score_fr.weight.any() and not m.score_pool4.weight.any()
    assert t.norm == CAFFE_BGR  # the Caffe net's BGR, mean-subtracted input is kept
    assert "21 -> 3 classes" in next(msg for msg in logs if msg.startswith("init:"))


def test_presets_only_fill_what_the_user_did_not_set(tmp_path):
    cfg = TrainConfig(data="x", preset="paper", lr=3e-4)
    cfg.apply_preset({"lr"})
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.schedule, cfg.freeze_upsampling) == ("sgd", 0.9, 3e-4, "constant", True)
    cfg = TrainConfig(data="x", preset="paper", loss="sum")
    cfg.apply_preset({"loss"})
    assert (cfg.momentum, cfg.lr) == (0.99, 1e-10)
    with pytest.raises(ValueError, match="paper, modern"):
        TrainConfig(data="x", preset="fast").apply_preset(set())
    assert set(PRESETS["paper"]) == set(PRESETS["modern"])  # a switch of preset changes every recipe option


def test_paper_preset_freezes_only_the_final_upsampling(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=2)
    cfg = tiny_config(data, tmp_path / "run", preset="paper")
    cfg.apply_preset({"width", "fc_channels", "crop", "scale", "batch_size", "threads", "batch_norm", "padding"})
    t, _ = _setup(cfg)
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert "upscore8.weight" not in trainable
    assert {"upscore2.weight", "upscore_pool4.weight", "score_pool3.weight"} <= trainable
    bias_group = [g for g in t.optimizer.param_groups if g["lr_mult"] == 2.0]
    assert bias_group and all(p.ndim == 1 for p in bias_group[0]["params"])
    assert isinstance(t.optimizer, torch.optim.SGD) and t.optimizer.defaults["momentum"] == 0.9


def test_ddp_two_gloo_processes_match_one_process_with_the_double_batch(tmp_path):
    """torchrun, 2 CPU processes x batch 2 == 1 process x batch 4: same samples, averaged gradients."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    data = write_list_dataset(tmp_path / "d", n=8)
    recipe = dict(width=0.0625, fc_channels=16, batch_norm="false", dropout=0, crop="32x48", scale="1,1",
                  optimizer="sgd", momentum=0.9, schedule="constant", class_weights="none", ema=0, threads=1)
    common = [*(a for k, v in recipe.items() for a in ("--set", f"{k}={v}")), "--lr", "0.05", "--epochs", "2",
              "--device", "cpu", "--num-classes", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "--no-python", str(Path(sys.executable).parent / "fcn-label"),
           "finetune", str(data), "-o", str(tmp_path / "ddp"), "-b", "2", *common]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    from fcn_label.cli import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(["finetune", str(data), "-o", str(tmp_path / "one"), "-b", "4", *common])
    assert e.value.code in (0, None)
    a, b = _train_state(tmp_path / "ddp" / "last.pt"), _train_state(tmp_path / "one" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["world_size"] == 2
    _assert_same_tensors(a["model"], b["model"], atol=1e-5)
    init = FCN(FCNConfig(num_classes=3, width=0.0625, fc_channels=16, batch_norm=False, dropout=0.0))
    assert not torch.allclose(init.state_dict()["score_fr.weight"], a["model"]["score_fr.weight"])
    assert a["history"][-1]["loss"] == pytest.approx(b["history"][-1]["loss"], rel=1e-4)  # reduced across ranks


def test_loader_workers_and_channels_last_do_not_change_training(tmp_path):
    """Augmentation is keyed by (seed, epoch, index), so worker processes give the identical run;
    NHWC only reorders float sums."""
    data = write_list_dataset(tmp_path / "d", n=8)
    runs = {}
    # NHWC is compared after a few steps: over epochs, SGD on 8 tiny images amplifies float-order noise
    # chaotically (seed-dependent: 3e-5 to 2e-2 after 2 epochs), which says nothing about the layout.
    for name, kw in {"base": {}, "workers": dict(workers=2), "short": dict(max_steps=3),
                     "nhwc": dict(channels_last=True, max_steps=3)}.items():
        t = Trainer(tiny_config(data, tmp_path / name, epochs=2, optimizer="sgd", lr=0.01, dropout=0.0, **kw),
                    log=lambda m: None)
        t.run()
        runs[name] = t.model.state_dict()
    _assert_same_tensors(runs["workers"], runs["base"])
    _assert_same_tensors(runs["nhwc"], runs["short"], atol=1e-4)
    assert not torch.equal(runs["base"]["score_fr.weight"], torch.zeros_like(runs["base"]["score_fr.weight"]))


def test_save_every_writes_last_pt_less_often_but_always_after_validation_and_at_the_end(tmp_path, monkeypatch):
    import fcn_label.train.loop as train_mod

    data = write_list_dataset(tmp_path / "d", n=4)
    val = write_list_dataset(tmp_path / "d", n=2, seed=1, name="val")
    written = []
    real = train_mod.save_checkpoint

    def spy(ck, path, **kw):
        if Path(path).name == "last.pt":
            written.append(ck.train_state["epoch"])
        return real(ck, path, **kw)

    monkeypatch.setattr(train_mod, "save_checkpoint", spy)
    t = Trainer(tiny_config(data, tmp_path / "run", val=str(val), epochs=7, save_every=3, val_every=5), log=lambda m: None)
    t.run()
    assert written == [3, 5, 6, 7]  # every 3rd epoch, after the validation at 5, and the last
    assert len(t.history) == 7 and _train_state(tmp_path / "run" / "last.pt")["epoch"] == 7


def test_init_backbone_imagenet_reads_torchvision_cache_in_torch_home(tmp_path, monkeypatch):
    """init_backbone imagenet = torchvision's VGG16_Weights.IMAGENET1K_V1 file in TORCH_HOME's cache."""
    from torchvision.models import VGG16_Weights

    home = tmp_path / "torch_home"
    cached = home / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    row = write_vgg16_file(cached)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded a cached file"))
    data = write_list_dataset(tmp_path / "d", n=2)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), num_classes=3, init_backbone="imagenet",
                      ema=0.0, threads=1)
    cfg.apply_preset({"ema"})
    t, logs = _setup(cfg)
    assert torch.all(t.model.conv1_1.weight == 1) and torch.all(t.model.conv5_3.weight == 13)
    assert torch.equal(t.model.fc6.weight[7], row.view(512, 7, 7))
    assert any(str(cached) in msg for msg in logs)


def test_init_backbone_imagenet_offline_is_one_line_saying_where_the_file_goes(tmp_path, monkeypatch, capsys):
    from torchvision.models import VGG16_Weights

    def offline(url, dst, *a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = write_list_dataset(tmp_path / "d", n=2)
    try:
        run_cli(["finetune", str(data), "--set", "init_backbone=imagenet", "--num-classes", "3", "--out",
                 str(tmp_path / "run"), "--epochs", "1"])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    where = tmp_path / "empty_home" / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    assert code == 2 and "Traceback" not in err and len(errors) == 1
    assert str(where) in errors[0] and VGG16_Weights.IMAGENET1K_V1.url in errors[0]
    assert not (tmp_path / "run" / "last.pt").exists()
