"""The CLI's error policy: a user's mistake is one red line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fcn_label.cli.predict as predict_cli
from fcn_label.cli import run_cli


def test_an_unexpected_value_error_is_a_bug_not_a_user_error(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(predict_cli, "discover", broken)
    with pytest.raises(ValueError, match="internal invariant"):  # not turned into exit 2
        run_cli(["predict", str(tmp_path), "--out", str(tmp_path / "out"), "-q"])


def test_a_bad_path_is_one_red_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(["evaluate", "--gt", str(tmp_path / "nope"), "--pred", str(tmp_path), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]


def test_a_bug_in_a_subprocess_exits_1_with_a_traceback(tmp_path):
    code = ("import fcn_label.cli.predict as p, fcn_label.cli as c\n"
            "def broken(*a, **k): raise ValueError('internal invariant broken')\n"
            "p.discover = broken\n"
            f"c.run_cli(['predict', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}, '-q'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "internal invariant broken" in proc.stderr
