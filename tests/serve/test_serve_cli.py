"""`fcn-label serve` refuses what it cannot serve with one line and exit 2, before listening."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def serve(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The CLI in this process (each of these fails before it would listen); exit status and stderr kept."""
    import contextlib
    import io

    from fcn_label.cli import run_cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(["serve", "--state", str(tmp_path / "s"), *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["fcn-label", "serve", *args], code, out.getvalue(), err.getvalue())


def test_bad_basic_auth_and_busy_port_are_one_line(tmp_path):
    r = serve("--basic-auth", "nopassword", tmp_path=tmp_path)
    assert r.returncode == 2 and "--basic-auth: expected USER:PASSWORD" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = serve("--port", str(s.getsockname()[1]), "--no-train", tmp_path=tmp_path)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr
    r = serve("-w", str(tmp_path / "missing.pt"), tmp_path=tmp_path)
    assert r.returncode == 2 and "missing.pt: no such weights file" in r.stderr


def test_the_label_studio_url_must_be_http(tmp_path):
    r = serve("--label-studio-url", "ftp://x", "--no-train", tmp_path=tmp_path)
    assert r.returncode == 2 and "expected http(s)://HOST[:PORT]" in r.stderr
