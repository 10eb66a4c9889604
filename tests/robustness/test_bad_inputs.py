"""One unattended predict run over a generated corpus of bad and odd inputs.

The corpus (see ``support/corpus.py``) is run once through the real CLI in a subprocess,
with the output folder inside the input folder; each test then checks one promise
for every case: a one-line message naming the file, a failures.csv row, masks of
the good files equal to an independent reference, nothing written outside --out.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import corpus
from fcn_label.cli import run_cli
from fcn_label.images import InputError, read_image
from fcn_label.predict import discover, shown
from fcn_label.checkpoint import save_checkpoint
from support.helpers import make_checkpoint, one_at_a_time, rand_image

MAX_PIXELS = 1_000_000


def key(path) -> str:
    """A file's identity as reports show it (symlinks resolved, non-UTF-8 bytes as \\xNN)."""
    return os.path.realpath(shown(str(path)))


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` except ``skip``: (size, mtime) of files, -1 for folders and links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if Path(dirpath, n) != skip]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns) if os.path.isfile(p) and not os.path.islink(p) else (-1, -1)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    ck = make_checkpoint()
    save_checkpoint(ck, root / "model.pt")
    folder, extra, cases = corpus.build(root)
    big = folder / "over_limit.png"
    Image.fromarray(np.zeros((1000, 1001, 3), np.uint8)).save(big)
    cases.append(corpus.Fail("image over --max-pixels", big, "1001x1000 pixels exceeds the limit of 1,000,000"))
    out = folder / "labels"  # inside the input folder: must never be read back
    before = snapshot(root, out)
    cmd = [sys.executable, "-m", "fcn_label", "predict", str(folder), *map(str, extra), "--out", str(out),
           "-w", str(root / "model.pt"), "--parallel", "workers=2", "--batch-size", "4", "--max-pixels", str(MAX_PIXELS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    failures = list(csv.DictReader(open(out / "failures.csv", encoding="utf-8")))
    return dict(root=root, folder=folder, out=out, cases=cases, proc=proc, rows=rows, failures=failures,
                before=before, ck=ck, cmd=cmd)


def test_batch_continues_and_exit_status_is_1(run):
    proc = run["proc"]
    oks = [c for c in run["cases"] if isinstance(c, corpus.Ok)]
    fails = [c for c in run["cases"] if isinstance(c, corpus.Fail)]
    assert proc.returncode == 1, proc.stderr
    assert f"done {len(oks)}, skipped 0 (already done), failed {len(fails)}" in proc.stderr
    assert len(run["rows"]) == len(oks) and len(run["failures"]) == len(fails)


def test_every_bad_file_gets_one_line_naming_it_and_a_failures_row(run):
    lines = run["proc"].stderr.splitlines()
    assert not [ln for ln in lines if "Traceback" in ln or "Warning" in ln or "warn(" in ln], run["proc"].stderr
    by_path = {r["path"]: r["reason"] for r in run["failures"]}
    wrong = []
    for c in (c for c in run["cases"] if isinstance(c, corpus.Fail)):
        mine = [ln for ln in lines if ln.startswith(("failed: ", "error: ")) and shown(str(c.path)) in ln]
        if len(mine) != 1 or c.words not in mine[0]:
            wrong.append((c.kind, mine))
        reason = by_path.get(shown(str(c.path)), "")
        if not reason.startswith(shown(str(c.path))) or c.words not in reason:
            wrong.append((c.kind, "failures.csv", reason))
    assert not wrong
    # every stderr line is the header, one failure, or the summary: nothing else leaks out
    other = [ln for ln in lines if not ln.startswith(("fcn-label: ", "failed: ", "done ", "predict "))]
    assert not other, other


def test_good_files_masks_equal_an_independent_reference(run):
    ck, out = run["ck"], run["out"]
    model = ck.build()
    by_path = {key(r["path"]): r for r in run["rows"]}
    wrong = []
    for c in (c for c in run["cases"] if isinstance(c, corpus.Ok)):
        r = by_path.get(key(c.path))
        if r is None:
            wrong.append((c.kind, "no row"))
            continue
        if not c.out.startswith("<") and r["mask"] != c.out:
            wrong.append((c.kind, r["mask"], c.out))
        mask = np.asarray(Image.open(out / r["mask"]))
        ref = one_at_a_time(ck, c.rgb, model)
        if mask.shape != ref.shape or not np.array_equal(mask, ref):
            wrong.append((c.kind, "labels differ", mask.shape, ref.shape))
        if (int(r["width"]), int(r["height"])) != (c.rgb.shape[1], c.rgb.shape[0]):
            wrong.append((c.kind, "size", r["width"], r["height"]))
    assert not wrong


def test_exif_reference_agrees_with_pillow_exif_transpose(run):
    """The corpus's own numpy flips for orientations 2-8 are checked against Pillow's, so the reference is sound."""
    from PIL import ImageOps

    exif = [c for c in run["cases"] if c.kind.startswith("EXIF orientation")]
    assert len(exif) == 7
    for c in exif:
        with Image.open(c.path) as im:
            assert np.array_equal(np.asarray(ImageOps.exif_transpose(im).convert("RGB")), c.rgb), c.kind


def test_output_names_unique_short_and_inside_out(run):
    out = run["out"].resolve()
    masks = [r["mask"] for r in run["rows"]]
    assert len({m.lower() for m in masks}) == len(masks)
    for m in masks:
        p = (out / m).resolve()
        assert out in p.parents and p.is_file(), m
        assert all(len(part.encode()) <= 255 for part in Path(m).parts)
    # the 255-byte name and the 253-byte UTF-8 name got shortened names that still start like the original
    short = {c.kind: next(r["mask"] for r in run["rows"] if key(r["path"]) == key(c.path))
             for c in run["cases"] if isinstance(c, corpus.Ok) and c.out == "<shortened>"}
    assert short["longest name (255 bytes)"].startswith("M" * 100)
    assert short["long multi-byte name"].startswith("日" * 30)
    assert not [p for p in out.rglob("*.tmp")]


def test_nothing_written_outside_out(run):
    assert snapshot(run["root"], run["out"]) == run["before"]


def test_rerun_reads_nothing_back_and_redoes_nothing(run, capsys):
    """Second run: the output folder inside the input is not input, finished masks are skipped."""
    items, problems = discover([run["folder"]], run["out"])
    assert not [it for it in items if run["out"] in it.path.parents]
    with pytest.raises(SystemExit) as e:
        run_cli(run["cmd"][3:] + ["-q", "--parallel", "workers=0"])
    err = capsys.readouterr().err
    oks = sum(isinstance(c, corpus.Ok) for c in run["cases"])
    fails = sum(isinstance(c, corpus.Fail) for c in run["cases"])
    assert e.value.code == 1
    assert f"done 0, skipped {oks} (already done), failed {fails}" in err


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path):
    import tracemalloc

    p = tmp_path / "bomb.png"
    p.write_bytes(corpus.png_bytes(100000, 100000, 8, 2, b"\x00" * 10))
    tracemalloc.start()
    with pytest.raises(InputError, match=r"bomb.png: 100000x100000 pixels exceeds the limit of 250,000,000"):
        read_image(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # decoding would need 30 GB


def test_unreadable_file_is_reported(tmp_path):
    """Permission denied names the file. Root reads anything, so as root the read runs in a child turned 'nobody'."""
    p = tmp_path / "secret.png"
    Image.fromarray(rand_image(8, 8, 0)).save(p)
    os.chmod(p, 0)
    expected = f"{p}: permission denied; make the file readable"
    if os.geteuid() != 0:
        with pytest.raises(InputError) as e:
            read_image(p)
        assert str(e.value) == expected
        return
    # the child starts inside tmp_path and reads a relative name: pytest's 0700 parent folders stay as they are
    os.chmod(tmp_path, 0o711)
    expected = "secret.png: permission denied; make the file readable"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try to read, report the message through the pipe
        msg = "no error"
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.chdir(tmp_path)
            os.setresuid(65534, 65534, 65534)
        except OSError as e:
            msg = f"cannot become uid 65534: {e}"
        else:
            try:
                read_image("secret.png")
            except InputError as e:
                msg = str(e)
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                msg = f"child failed: {type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    if got.startswith("cannot become uid"):
        pytest.skip(f"running as root without the right to switch user, so no permission error to test: {got}")
    assert got == expected


def test_decoding_in_threads_leaves_the_warning_filters_alone(tmp_path):
    """Pillow's recoverable warnings are filtered once at import, not by swapping the global filter list per decode.

    evaluate decodes in threads; catch_warnings around each decode raced and could leave every
    warning of the process silenced (or Pillow's noise back on). The CLI run above shows no warning
    reaches stderr; here 8 threads decode a JPEG with a corrupt EXIF block 400 times.
    """
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    p = tmp_path / "bad_exif.jpg"
    p.write_bytes(corpus.jpeg_bytes(rand_image(24, 32, 1), exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"))
    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        shapes = set(pool.map(lambda _: read_image(p).shape, range(400)))
    assert shapes == {(24, 32, 3)}
    assert warnings.filters == before
