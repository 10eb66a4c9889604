"""`fcn-label finetune --config`: TOML files and a run's config.json as configs, precedence, errors, and --init's
ignore label and classes."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_label.checkpoint import load_checkpoint
from fcn_label.cli import run_cli
from fcn_label.train import PRESETS, TrainConfig

from support.synth import write_list_dataset

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 finetune reads TOML through tomli

REPO = Path(__file__).resolve().parents[2]
TINY_TOML = """\
width = 0.0625
fc_channels = 16
crop = [32, 48]
scale = [0.75, 1.5]
threads = 1
"""


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        run_cli(args)
    return e.value.code or 0


def test_toml_keys_then_set_then_flags(parsed_config, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('data = "from-file.txt"\nlr = 0.01\nepochs = 7\nclass_weights = "median"\n'
                    'class_weight_power = 0.25\ncrop = [64, 96]\nhflip = false\n')
    cfg = parsed_config(["--config", str(toml), "--out", str(tmp_path / "a")])
    assert (cfg.data, cfg.lr, cfg.epochs, cfg.class_weights, cfg.class_weight_power, cfg.crop, cfg.hflip) == (
        "from-file.txt", 0.01, 7, "median", 0.25, (64, 96), False)
    assert (cfg.optimizer, cfg.ema) == (PRESETS["modern"]["optimizer"], PRESETS["modern"]["ema"])  # preset fills the rest
    cfg = parsed_config(["x.txt", "--config", str(toml), "--set", "lr=0.02", "--set", "epochs=9", "--epochs", "3",
                  "--out", str(tmp_path / "b")])
    assert (cfg.data, cfg.lr, cfg.epochs) == ("x.txt", 0.02, 3)  # DATA beats the file, --set the file, a flag --set
    # a key the file sets is explicit: the paper preset does not overwrite it
    toml.write_text('preset = "paper"\nmomentum = 0.5\n')
    cfg = parsed_config(["x.txt", "--config", str(toml), "--out", str(tmp_path / "c")])
    assert (cfg.optimizer, cfg.momentum, cfg.lr) == ("sgd", 0.5, PRESETS["paper"]["lr"])


@pytest.mark.parametrize("text, message", [
    ("lr = 0.01\nlearning_rate = 0.1\n", "run.toml: unknown key 'learning_rate'"),
    ("epochs = 'ten'\n", "run.toml: key 'epochs': expected a whole number, got 'ten'"),
    ("hflip = 1\n", "run.toml: key 'hflip': expected true or false, got 1"),
    ("epochs = \n", "run.toml: not valid TOML"),
    ("class_weights = 'log'\n", "unknown class_weights 'log'; choose one of none, median, sqrt-median"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_key(tmp_path, capsys, text, message):
    data = write_list_dataset(tmp_path / "d", n=2)
    (tmp_path / "run.toml").write_text(text)
    assert _cli(["finetune", str(data), "--config", str(tmp_path / "run.toml"), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_missing_config_and_missing_data_are_one_line(tmp_path, capsys):
    assert _cli(["finetune", "x.txt", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: config file not found" in capsys.readouterr().err
    (tmp_path / "run.toml").write_text("epochs = 1\n")
    assert _cli(["finetune", "--config", str(tmp_path / "run.toml")]) == 2
    assert "no training data: give DATA" in capsys.readouterr().err


def test_a_runs_config_json_reruns_it_and_resumes_it(tmp_path, capsys):
    """config.json is a config: the same run again from it alone, and --resume of the run with it."""
    data = write_list_dataset(tmp_path / "d", n=4)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run = tmp_path / "run"
    assert _cli(["finetune", str(data), "--config", str(tmp_path / "tiny.toml"), "-o", str(run), "--epochs", "1",
                 "-b", "2", "--set", "class_weights=none", "--set", "criterion=ohem"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["criterion"], saved["class_weights"], saved["ignore_index"]) == ("ohem", "none", 255)

    again = tmp_path / "again"
    assert _cli(["finetune", "--config", str(run / "config.json"), "-o", str(again)]) == 0
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(again / "last.pt")
    for k in a.state_dict:
        assert np.array_equal(a.state_dict[k].numpy(), b.state_dict[k].numpy()), k
    assert json.loads((again / "config.json").read_text()) == saved | {"out": str(again)}

    # resume from the file with more epochs (a resume-free option): no changed-options warning
    capsys.readouterr()
    assert _cli(["finetune", "--config", str(run / "config.json"), "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr()
    assert "resumed from" in out.err + out.out and "changed options" not in out.err + out.out
    assert load_checkpoint(run / "last.pt").train_state["epoch"] == 2


def _void_dataset(root: Path, void: int) -> Path:
    """A list dataset of classes 0..2 whose top row is the 'void' label ``void`` (CamVid's 11 for its 11 classes)."""
    lst = write_list_dataset(root, n=4)
    for line in lst.read_text().split("\n"):
        if line:
            m = root / line.split()[1]
            a = np.array(Image.open(m))
            a[0, :] = void
            Image.fromarray(a, mode="L").save(m)
    return lst


def test_init_supplies_the_ignore_label_and_the_classes(tmp_path, capsys):
    """Fine-tuning from a model on data whose void label is that model's ignore label needs no --ignore-index
    (CamVid's list files with --init fcn8s-compact-camvid); a given --ignore-index still wins."""
    data = _void_dataset(tmp_path / "d", void=3)
    (tmp_path / "names.txt").write_text("sky 1 2 3\nroad 4 5 6\ncar 7 8 9\n")
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    tiny = ["--config", str(tmp_path / "tiny.toml"), "-b", "2", "--epochs", "1"]
    first = tmp_path / "first"
    assert _cli(["finetune", str(data), "--classes", str(tmp_path / "names.txt"), "--ignore-index", "3",
                 "-o", str(first), *tiny]) == 0
    # without --ignore-index the data's label 3 would be outside classes 0..2 under the default 255
    assert _cli(["finetune", str(data), "-o", str(tmp_path / "scratch"), "--num-classes", "3", *tiny]) == 2
    assert "outside classes 0..2 and ignore 255" in capsys.readouterr().err

    tuned = tmp_path / "tuned"
    assert _cli(["finetune", str(data), "--init", str(first / "last.pt"), "-o", str(tuned), *tiny]) == 0
    assert "ignore label 3 (from --init; --ignore-index overrides)" in capsys.readouterr().err
    ck = load_checkpoint(tuned / "last.pt")
    assert (ck.ignore_index, ck.classes, ck.palette) == (3, ["sky", "road", "car"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    assert json.loads((tuned / "config.json").read_text())["ignore_index"] == 3

    # the user's word beats the model's
    assert _cli(["finetune", str(data), "--init", str(first / "last.pt"), "--ignore-index", "255",
                 "-o", str(tmp_path / "told"), *tiny]) == 2
    assert "outside classes 0..2 and ignore 255" in capsys.readouterr().err


def _doc_rows() -> dict[str, tuple[str, str]]:
    """`key` -> (default cell, meaning cell) of the key tables in docs/finetune-config.md."""
    rows = {}
    for line in (REPO / "docs" / "finetune-config.md").read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|([^|]*)\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def test_the_docs_page_explains_every_key_with_its_default():
    rows = _doc_rows()
    assert set(rows) == {f.name for f in fields(TrainConfig)}
    for f in fields(TrainConfig):
        cell, meaning = rows[f.name]
        assert len(meaning) > 20, f.name
        if f.name in PRESETS["modern"]:  # preset-dependent: each preset's value is given
            for p, values in PRESETS.items():
                want = tomllib.loads(f"v = {json.dumps(values[f.name])}")["v"]
                got = re.search(rf"{p}:\s*`([^`]*)`", cell)
                assert got and tomllib.loads(f"v = {got.group(1)}")["v"] == want, (f.name, p, cell)
        elif f.default is None or f.default is MISSING:
            assert cell.startswith("unset"), (f.name, cell)
        else:
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            assert cell.startswith("`") and tomllib.loads(f"v = {cell.split('`')[1]}")["v"] == default, (f.name, cell)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_every_shipped_recipe_file_loads_as_a_valid_config(parsed_config, tmp_path, name):
    """The recipes scripts/gpu_session.sh and the model card run: each parses, validates and sets what it says."""
    recipe = tomllib.loads((REPO / "configs" / name).read_text())
    cfg = parsed_config(["x.txt", "--config", str(REPO / "configs" / name), "--out", str(tmp_path / "r")])
    for key, want in recipe.items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == want, key
