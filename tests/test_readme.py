"""The README's Python snippets run as printed (in a scratch folder with the example photos), so the
documented API cannot drift from the package without a failing test."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2, "the README shows a predictor on arrays and a job on paths"
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    script = "\n".join(blocks) + "\nassert result.done == 3 and not result.failed, result\n"
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3
