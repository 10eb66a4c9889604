"""`fcn-label finetune`: option mapping, user errors, kill-and-resume, and use of the result by predict/evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcn_label.cli.finetune as finetune_cli
from fcn_label.cli import run_cli
from fcn_label.train import TrainConfig
from fcn_label.checkpoint import WeightsError, load_checkpoint

from support.synth import write_list_dataset

FCN_LABEL = Path(sys.executable).parent / "fcn-label"
TINY = ["--set", "width=0.0625", "--set", "fc_channels=16", "--set", "crop=32x48", "--set", "scale=0.75,1.5",
        "--set", "threads=1"]
REPO = Path(__file__).resolve().parents[2]


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        run_cli(args)
    return e.value.code or 0


def test_help_explains_every_option_and_shows_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert _cli(["finetune", "--help"]) == 0
    out = capsys.readouterr().out
    import typer.main

    for example in ("camvid/train.txt --val ../shared/data/camvid/val.txt", "--init fcn8s-compact-camvid",
                    "init_backbone=imagenet", "--config runs/camvid/config.json", "torchrun --standalone --nproc-per-node",
                    "--resume"):
        assert example in out, example
    # every option that is not a flag is listed as a config key, and the page that explains them is named
    flags = {p.name for p in typer.main.get_command(finetune_cli.app).commands["finetune"].params}
    for key in finetune_cli.CONFIG_KEYS:
        assert key in out and key not in flags, key
    assert set(finetune_cli.CONFIG_KEYS) | set(finetune_cli.FLAGS) == {f.name for f in fields(TrainConfig)}
    assert "docs/finetune-config.md" in out
    import typer.main

    command = typer.main.get_command(finetune_cli.app).commands["finetune"]
    for p in command.params:
        assert p.help and len(p.help) > 15, p.name  # every option says what it does
        assert p.opts[0] in out, p.opts[0]
    assert "paper preset 0.0001; modern preset 0.002" in out  # preset-dependent defaults are spelled out


def _shipped_recipe() -> dict:
    from fcn_label.checkpoint import resolve_weights

    return load_checkpoint(resolve_weights(None)).metadata["train_config"]


def _as_recorded(cfg: TrainConfig) -> dict:
    """A parsed config as a checkpoint's config.json holds it: lists, and the arch the trainer built."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    d["arch"] = d["arch"] or "fcn8s"
    return d


# where a run reads and writes and what hardware it uses: not part of the recipe
NOT_RECIPE = {"data", "val", "out", "workers", "cache", "device", "amp", "channels_last", "threads", "max_steps",
              "save_every"}


def test_the_camvid_recipe_file_is_the_shipped_models_recipe(parsed_config, tmp_path):
    """configs/camvid-finetune.toml, as its own comment says to run it, trains what the shipped file records
    (since 0.2.0 the shipped file is that fine-tuning run's; camvid-compact.toml made its starting point)."""
    import shlex

    recipe_file = REPO / "configs" / "camvid-finetune.toml"
    comment = " ".join(ln.lstrip("# ").rstrip("\\ ") for ln in recipe_file.read_text().splitlines() if ln.startswith("#"))
    line = comment[comment.index("fcn-label finetune"):].split("(", 1)[0]
    argv = shlex.split(line.split("fcn-label finetune", 1)[1].replace("configs/camvid-finetune.toml", str(recipe_file)))
    argv = [a for a in argv if a not in ("runs/camvid", "runs/r2", "--out")] + ["--out", str(tmp_path / "camvid")]
    cfg = _as_recorded(parsed_config(argv))
    if cfg["ignore_index"] is None:  # unset: the trainer takes --init's, and records the value it used
        from fcn_label.checkpoint import resolve_weights

        cfg["ignore_index"] = load_checkpoint(resolve_weights(cfg["init"])).ignore_index
    recipe = _shipped_recipe()
    assert {k: cfg[k] for k in recipe if k not in NOT_RECIPE} == {k: v for k, v in recipe.items() if k not in NOT_RECIPE}


def test_an_explicit_option_beats_the_preset(parsed_config, tmp_path):
    cfg = parsed_config(["x.txt", "--preset", "paper", "--lr", "0.001", "--out", str(tmp_path / "p")])
    assert (cfg.lr, cfg.optimizer, cfg.momentum, cfg.width, cfg.batch_norm) == (1e-3, "sgd", 0.9, 1.0, False)
    cfg = parsed_config(["x.txt", "--out", str(tmp_path / "m")])
    assert (cfg.preset, cfg.optimizer, cfg.lr, cfg.width) == ("modern", "adamw", 2e-3, 0.25)

@pytest.mark.parametrize("args, message", [
    (["--preset", "fast"], "'fast' is not one of 'paper', 'modern'"),
    (["--set", "arch=fcn4s"], "unknown arch 'fcn4s'; choose one of fcn32s, fcn16s, fcn8s"),
    (["--set", "schedule=step"], "unknown schedule 'step'; choose one of constant, poly, cosine"),
    (["--set", "crop=300"], "--set: key 'crop': expected two numbers, got 300"),
    (["--set", "crops=300"], "--set: unknown key 'crops'"),
    (["--set", "crop"], "--set 'crop': expected KEY=VALUE"),
    (["--set", "criterion=focal"], "unknown criterion 'focal'; choose one of ce, ohem, lovasz"),
    (["--set", "criterion=ohem", "--set", "loss=sum"], "criterion ohem is a mean over pixels"),
])
def test_bad_options_are_one_line_errors_listing_the_choices(tmp_path, capsys, args, message):
    data = write_list_dataset(tmp_path / "d", n=2)
    assert _cli(["finetune", str(data), "-o", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # rejected before anything is written


def test_bad_masks_are_named_before_training(tmp_path, capsys):
    data = write_list_dataset(tmp_path / "d", n=4)
    bad = tmp_path / "d" / "trainannot" / "img02.png"
    m = np.array(Image.open(bad))
    m[0, 0] = 7
    Image.fromarray(m, mode="L").save(bad)
    assert _cli(["finetune", str(data), "-o", str(tmp_path / "run"), "--num-classes", "3", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: mask values [7] outside classes 0..2 and ignore 255" in err and "Traceback" not in err

    Image.fromarray(np.zeros((20, 20), np.uint8), mode="L").save(bad)
    assert _cli(["finetune", str(data), "-o", str(tmp_path / "run"), "--num-classes", "3", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: mask is 20x20 but image" in err and "img02.png is 48x32" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_run_folder_is_never_silently_reused(tmp_path, capsys):
    data = write_list_dataset(tmp_path / "d", n=2)
    run = tmp_path / "run"
    assert _cli(["finetune", str(data), "-o", str(run), "--resume", *TINY]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _cli(["finetune", str(data), "-o", str(run), "--epochs", "1", "-b", "2", *TINY]) == 0
    assert _cli(["finetune", str(data), "-o", str(run), "--epochs", "1", *TINY]) == 2
    assert "a run already exists there; add --resume" in capsys.readouterr().err


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_state(tmp_path):
    data = write_list_dataset(tmp_path / "d", n=8)
    args = ["finetune", str(data), "-b", "1", "--epochs", "30", "--set", "checkpoint_every_steps=1",
            "--set", "dropout=0.3", "--set", "ema=0.9", *TINY]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(FCN_LABEL), *args, "-o", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if load_checkpoint(killed / "last.pt").train_state["step"] >= 5:
                    break
            except WeightsError:  # not written yet
                pass
            time.sleep(0.05)
        time.sleep(0.1)  # land anywhere: mid-step or mid-write
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    survived = load_checkpoint(killed / "last.pt").train_state  # atomic: never a truncated file
    assert 5 <= survived["step"] < 30 * 8

    stop = survived["step"] + 11  # a few steps past the kill, mid-epoch or not
    assert _cli([*args, "-o", str(killed), "--resume", "--set", f"max_steps={stop}"]) == 0
    assert _cli([*args, "-o", str(tmp_path / "straight"), "--set", f"max_steps={stop}"]) == 0
    a = load_checkpoint(killed / "last.pt").train_state
    b = load_checkpoint(tmp_path / "straight" / "last.pt").train_state
    assert a["step"] == b["step"] == stop and a["batch_in_epoch"] == b["batch_in_epoch"]
    for part in ("model", "ema"):
        for k in b[part]:
            assert torch.allclose(a[part][k].double(), b[part][k].double(), atol=1e-6, rtol=0), (part, k)
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], rel=1e-6)


def test_result_is_used_directly_by_predict_and_evaluate(tmp_path, capsys):
    data = write_list_dataset(tmp_path / "d", n=6)
    val = write_list_dataset(tmp_path / "d", n=3, seed=1, name="val")
    (tmp_path / "names.txt").write_text("background 0 0 0\nred thing 200 0 0\ngreen thing 0 200 0\n")
    run = tmp_path / "run"
    assert _cli(["finetune", str(data), "--val", str(val), "-o", str(run), "--classes", str(tmp_path / "names.txt"),
                 "--epochs", "2", "-b", "2", *TINY]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv", "log.json"]
    ck = load_checkpoint(run / "best.pt")
    assert ck.classes == ["background", "red thing", "green thing"]
    assert ck.palette == [(0, 0, 0), (200, 0, 0), (0, 200, 0)]
    assert ck.train_state is None and "val_mean_iou" in ck.metadata["metrics"]
    log = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and all("val_mean_iou" in r and "lr" in r for r in log)
    capsys.readouterr()

    assert _cli(["predict", str(tmp_path / "d" / "val"), "-o", str(tmp_path / "pred"), "-w", str(run / "best.pt")]) == 0
    assert (tmp_path / "pred" / "img00.png").is_file()
    assert _cli(["evaluate", "--gt", str(val), "-w", str(run / "best.pt"), "-f", "json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    # evaluate scores the saved model exactly as training's validation did
    assert report["summary"]["mean_iou"] == pytest.approx(ck.metadata["metrics"]["val_mean_iou"], abs=1e-9)


def test_the_shipped_models_recorded_config_loads_back_as_a_config(parsed_config, tmp_path, monkeypatch):
    """The train_config a checkpoint records (what config.json holds) is a config file: it recreates itself."""
    monkeypatch.chdir(tmp_path)  # its relative --out lands here, if anything is written
    recorded = _shipped_recipe()
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    parsed = _as_recorded(parsed_config(["--config", str(tmp_path / "config.json")]))
    assert {k: parsed[k] for k in recorded} == recorded
    # options added since the file was made keep their defaults, which reproduce the old behaviour
    defaults = asdict(TrainConfig(data="x"))
    assert {k: parsed[k] for k in parsed if k not in recorded} == {k: defaults[k] for k in parsed if k not in recorded}


def _voc_folder(root: Path, top_label: int) -> Path:
    for d in ("JPEGImages", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        mask = np.zeros((32, 48), np.uint8)
        mask[8:20, 10:30] = top_label if i else 1
        mask[0, :] = 255
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{i}.png")
    return root


@pytest.mark.parametrize("top_label,num_classes,expect_voc", [(20, None, True), (5, 21, True), (5, None, False)])
def test_voc_folder_without_class_file_gets_the_voc_names(tmp_path, top_label, num_classes, expect_voc):
    from fcn_label.train import Trainer
    from fcn_label.classes import VOC_CLASSES

    from support.synth import tiny_config

    voc = _voc_folder(tmp_path / "VOC", top_label)
    cfg = tiny_config(voc, tmp_path / "run", num_classes=num_classes, ignore_index=255)
    logs = []
    t = Trainer(cfg, log=logs.append)
    t.setup()
    if expect_voc:
        assert t.classes == list(VOC_CLASSES)
        assert any("PASCAL VOC names" in m for m in logs)
    else:
        assert t.classes == [f"class_{i}" for i in range(6)]


def test_resume_removes_the_temporary_file_of_a_killed_checkpoint_write(tmp_path):
    from fcn_label.images import HOST
    from fcn_label.train import Trainer

    from support.synth import tiny_config

    data = write_list_dataset(tmp_path / "d", n=4)
    Trainer(tiny_config(data, tmp_path / "run", epochs=1), log=lambda m: None).run()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "run" / f".last.pt.abc123.{HOST}~{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a checkpoint")
    logs = []
    Trainer(tiny_config(data, tmp_path / "run", epochs=2), log=logs.append).run(resume=str(tmp_path / "run" / "last.pt"))
    assert not stale.exists()
    assert any("removed 1 unfinished temporary file" in m for m in logs)
    assert (tmp_path / "run" / "last.pt").is_file()
