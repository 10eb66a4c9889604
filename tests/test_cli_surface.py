"""What every session touches first: `fcn-label --version`, each --help and `fcn-label models` start
without the heavy libraries (checked by module, not by wall time, so it holds on any machine), and
the torch-free checkpoint summary `models` shows agrees with the full load."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fcn_label
from fcn_label.catalog import FORMAT, SHIPPED, read_summary
from fcn_label.checkpoint import load_checkpoint, save_checkpoint
from fcn_label.cli import run_cli
from support.helpers import make_checkpoint

REPO = Path(__file__).resolve().parent.parent
# what a --help or `models` must not import: each costs from a tenth of a second (pandas) to seconds (torch)
HEAVY = ("torch", "torchvision", "pandas", "pycocotools", "cv2", "onnxruntime", "scipy", "label_studio_sdk")


def _run_in_fresh_python(code: str) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        "COLUMNS": "300"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        run_cli(list(args))
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_distributions_version(flag, capsys, monkeypatch):
    asked = []

    def installed(name):
        asked.append(name)
        return "9.8.7"

    monkeypatch.setattr(importlib.metadata, "version", installed)
    code, out = _cli(capsys, flag)
    assert (code, out.out, out.err, asked) == (0, "fcn-label 9.8.7\n", "", ["fcn-label"])


def test_version_falls_back_to_the_package_when_not_installed(capsys, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    code, out = _cli(capsys, "--version")
    assert (code, out.out) == (0, f"fcn-label {fcn_label.__version__}\n")


def test_every_help_builds_without_the_heavy_libraries():
    got = _run_in_fresh_python(f"""
import contextlib, io, json, sys
from fcn_label.cli import app, run_cli
verbs = [c.name for c in app.registered_commands]
usage = {{}}
for args in [["--help"]] + [[v, "--help"] for v in verbs]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            run_cli(args)
        except SystemExit as e:
            assert e.code == 0, (args, e.code)
    usage[" ".join(args)] = "Usage:" in buf.getvalue()
print(json.dumps({{"verbs": verbs, "usage": usage, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
""")
    assert {"predict", "evaluate", "finetune", "models", "review", "select", "export"} <= set(got["verbs"])
    assert all(got["usage"].values()) and len(got["usage"]) == len(got["verbs"]) + 1, got["usage"]
    assert got["heavy"] == []


def test_models_lists_the_shipped_metrics_without_torch():
    got = _run_in_fresh_python(f"""
import contextlib, io, json, sys
from fcn_label.cli import run_cli
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        run_cli(["models"])
    except SystemExit as e:
        assert e.code == 0, e.code
print(json.dumps({{"out": buf.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
""")
    assert got["heavy"] == []
    for info in SHIPPED.values():
        ck = load_checkpoint(info.path)  # the reference: torch's full load
        m = ck.metadata["metrics"]
        row = next(line for line in got["out"].splitlines() if info.name in line and "loaded from" not in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[:5] == [info.name, ck.config.arch, str(ck.config.num_classes),
                             f"{100 * m['val_mean_iou']:.1f}", f"{100 * m['val_pixel_accuracy']:.1f}"], row


def _same_as_full_load(path):
    s, ck = read_summary(path), load_checkpoint(path)
    assert s is not None
    assert (s.arch, s.num_classes, s.classes) == (ck.config.arch, ck.config.num_classes, ck.classes)
    return s, ck


def test_summary_is_what_the_full_load_reads(tmp_path):
    for info in SHIPPED.values():
        s, ck = _same_as_full_load(info.path)
        assert s.metadata == ck.metadata
    ck = make_checkpoint(n=4)
    ck.metadata = {"metrics": {"val_mean_iou": 0.5}, "epochs": 3}
    ck.train_state = {"optimizer": {"state": {0: {"momentum_buffer": next(iter(ck.state_dict.values()))}}}}
    save_checkpoint(ck, tmp_path / "trained.pt")
    s, _ = _same_as_full_load(tmp_path / "trained.pt")
    assert s.metadata == {"metrics": {"val_mean_iou": 0.5}, "epochs": 3}


def test_summary_is_none_for_other_files_and_never_runs_their_code(tmp_path):
    import torch

    torch.save(make_checkpoint().state_dict, tmp_path / "bare.pth")  # a pytorch-fcn style state dict
    assert read_summary(tmp_path / "bare.pth") is None
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0 not a zip")
    assert read_summary(tmp_path / "photo.pt") is None
    assert read_summary(tmp_path / "missing.pt") is None

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save({"format": FORMAT, "config": {"arch": "fcn8s", "num_classes": 1}, "classes": ["a"],
                "metadata": {"x": Payload()}}, tmp_path / "evil.pt")
    assert read_summary(tmp_path / "evil.pt") is None and not marker.exists()
