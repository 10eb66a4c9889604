"""kill -9 in the middle of predict, then the same command again: the end result is as if nothing happened.

And two predict runs writing the same output folder at once leave only whole files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fcn_label.cli import run_cli
from fcn_label.images import HOST
from fcn_label.checkpoint import save_checkpoint
from support.helpers import make_checkpoint, rand_image
from support.same_outputs import assert_same_outputs

N = 40
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """An input folder, a model, and the outputs of one uninterrupted run to compare against."""
    root = tmp_path_factory.mktemp("crash")
    save_checkpoint(make_checkpoint(), root / "model.pt")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(N):
        h, w = [(160, 200), (150, 210), (96, 128)][i % 3]
        Image.fromarray(rand_image(h, w, i)).save(src / ("sub" if i % 4 == 0 else "") / f"im{i:02d}.png")
    ref = root / "ref"
    with pytest.raises(SystemExit) as e:
        run_cli(args(root, ref) + ["--parallel", "workers=0"])
    assert e.value.code == 0
    return root, ref


def args(root: Path, out: Path) -> list[str]:
    return ["predict", str(root / "in"), "--out", str(out), "-w", str(root / "model.pt"), "-q", "--batch-size", "2"]


def launch(root: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fcn_label", *args(root, out), "--parallel", "workers=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def _wait_killed(pgid: int, timeout: float = 10.0) -> None:
    """Until every process of the killed group is gone or a zombie (SIGKILL is delivered, not instant)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                running += 1
        if not running:
            return
        time.sleep(0.01)


def finished_lines(records: Path) -> int:
    """Whole lines in the record store's segments (a torn last line, kill -9 mid-write, does not count)."""
    return sum(seg.read_bytes().count(b"\n") for seg in records.glob("*.jsonl")) if records.is_dir() else 0


def test_kill_9_mid_run_then_rerun_equals_uninterrupted(job, capsys):
    root, ref = job
    out = root / "killed"
    records = out / ".fcn-label" / "records"
    proc = launch(root, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if finished_lines(records) >= 6:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its decoding worker, with no chance to clean up
    proc.wait()
    _wait_killed(proc.pid)  # the forked pipelines too; they may stay zombies, which the re-run must see through
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; give it more work"
    finished = finished_lines(records)
    assert 6 <= finished < N
    assert not (out / "predictions.json").exists()  # reports are written at the end only
    # the kill rarely lands inside a write (microseconds per file); plant what it leaves when it does:
    # the dead process's half-written temp file beside a mask, and one inside the records
    for folder in (out, records):
        (folder / f".im99.png.k1ll3d00.{HOST}~{proc.pid}.tmp").write_bytes(b"\x89PNG\r\n\x1a\n partial")

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(args(root, out) + ["--parallel", "workers=0"])
    assert e.value.code == 0
    # exactly the images without a record are predicted again (one whose mask was written but
    # not yet its record is among them); a finished image never is
    assert f"done {N - finished}, skipped {finished} (already done), failed 0" in capsys.readouterr().err
    assert_same_outputs(out, ref)


def launch_together(root: Path, out: Path, n: int = 2) -> list[subprocess.Popen]:
    """``n`` predict processes that import everything first, then start at one signal.

    Python and torch take seconds to import while the tiny model labels the 40
    images in about one, so processes started one after the other need not overlap.
    """
    gate = root / "gate"
    gate.mkdir(exist_ok=True)
    go = gate / "go"
    go.unlink(missing_ok=True)
    procs = []
    for i in range(n):
        ready = gate / f"ready{i}"
        ready.unlink(missing_ok=True)
        code = ("import sys, time, pathlib\n"
                "from fcn_label.cli import main\n"
                f"pathlib.Path({str(ready)!r}).touch()\n"
                f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
                f"sys.argv = ['fcn-label', *{args(root, out) + ['--parallel', 'workers=1']!r}]\n"
                "main()\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=ENV, start_new_session=True))
    deadline = time.time() + 120
    while not all((gate / f"ready{i}").exists() for i in range(n)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a predict process did not start"
        time.sleep(0.01)
    go.touch()
    return procs


def test_two_runs_on_one_output_folder_at_once(job):
    root, ref = job
    out = root / "shared_out"
    a, b = launch_together(root, out)
    for p in (a, b):
        p.wait(timeout=300)
    done = []
    for p in (a, b):
        err = p.stderr.read()
        assert p.returncode == 0, err
        n, skipped = map(int, re.search(r"done (\d+), skipped (\d+) \(already done\), failed 0", err).groups())
        assert n + skipped == N
        done.append(n)
    assert min(done) > 0 and sum(done) >= N  # they did overlap: both wrote masks, some the same ones
    assert_same_outputs(out, ref)


def test_finetune_killed_while_writing_its_checkpoint_resumes_from_the_last_whole_one(tmp_path):
    """kill -9 the moment a checkpoint is being written: last.pt is the previous whole file, --resume goes on.

    (test_finetune_cli.py kills at a random moment and checks resume equals an uninterrupted
    run; this one aims at the write itself.)
    """
    from support.synth import write_list_dataset
    from fcn_label.checkpoint import load_checkpoint

    data = write_list_dataset(tmp_path / "d", n=8)
    out = tmp_path / "run"
    args = ["finetune", str(data), "-o", str(out), "-b", "1", "--epochs", "50", "--set", "checkpoint_every_steps=1",
            "--set", "width=0.0625", "--set", "fc_channels=16", "--set", "crop=32x48", "--set", "threads=1"]
    proc = subprocess.Popen([sys.executable, "-m", "fcn_label", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    caught = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "last.pt").exists() and any(p.name.startswith(".last.pt.") for p in os.scandir(out)):
            os.killpg(proc.pid, signal.SIGKILL)
            caught = True
            break
    if not caught and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert caught, "no checkpoint write was seen (checkpoints are written through a temporary file)"
    state = load_checkpoint(out / "last.pt").train_state  # whole: loads, with its training state
    step = state["step"]
    assert step >= 1
    with pytest.raises(SystemExit) as e:
        run_cli(args + ["--resume", "--set", f"max_steps={step + 3}"])
    assert e.value.code == 0
    after = load_checkpoint(out / "last.pt").train_state
    assert after["step"] == step + 3  # continued from the checkpoint, not from scratch
    assert [r["step"] for r in after["history"]][: len(state["history"])] == [r["step"] for r in state["history"]]


@pytest.mark.parametrize("encoders", [0, 2])
def test_disk_full_stops_the_job_keeps_finished_work_and_resumes(tmp_path, monkeypatch, capsys, encoders):
    """ENOSPC is not one bad file: stop at once (no hour of doomed predictions), keep what is done.

    With encoders=2 the writes happen in forked encoding processes, which inherit the patched
    writer; the write attempts are counted in a file (under a lock) so that every process sees them.
    """
    import errno
    import fcntl

    import fcn_label.predfolder.outputs as outputs

    for i in range(12):
        Image.fromarray(rand_image(16, 20, i)).save(tmp_path / f"im{i:02d}.png")
    save_checkpoint(make_checkpoint(), tmp_path / "m.pt")
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path), "--out", str(out), "-w", str(tmp_path / "m.pt"), "-q",
            "--parallel", f"workers=0,encoders={encoders}", "--batch-size", "1"]
    real, log = outputs.write_bytes_atomic, tmp_path / "calls.log"
    log.touch()

    def calls() -> list[str]:
        return log.read_text().splitlines()

    def full_after_five(path, data):
        with open(log, "a") as f:  # one attempt per line; the lock orders the attempts of all processes
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(f"{os.getpid()} {path}\n")
            f.flush()
            n = len(calls())
            fcntl.flock(f, fcntl.LOCK_UN)
        if n > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(outputs, "write_bytes_atomic", full_after_five)
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert "done 5, skipped 0 (already done), failed 0" in err
    assert "error: stopped early: --out" in err and "No space left on device" in err and "Traceback" not in err
    # stopped right away: one refused attempt per writer, not one doomed attempt per remaining image
    assert 6 <= len(calls()) <= 5 + max(2, encoders)
    if encoders:
        assert os.getpid() not in {int(line.split()[0]) for line in calls()}  # the writes ran in the encoders
    monkeypatch.setattr(outputs, "write_bytes_atomic", real)  # space freed
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    assert e.value.code == 0 and "done 7, skipped 5 (already done), failed 0" in capsys.readouterr().err
    assert len(list(out.glob("im*.png"))) == 12
