"""Nothing is ever written outside --out: symlinks planted inside it, '..' and absolute names, globs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from fcn_label.images import atomic_path, remove_stale_temp
from fcn_label.predict import Item, PredictJob, PredictOptions, discover
from fcn_label.predict.discover import _dedupe
from fcn_label.predict import Predictor
from fcn_label.checkpoint import save_checkpoint
from support.helpers import make_checkpoint, rand_image


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_symlinks_inside_out_never_lead_outside(tmp_path):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    for rel in ("sub/deeper/x.png", "y.png", "z.png"):
        Image.fromarray(rand_image(16, 16, len(rel))).save(src / rel)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "sub")  # a folder link: masks under sub/ would land in outside/
    os.symlink(victim, out / "y.png")  # a file link where a mask goes: replaced, target untouched
    (out / ".fcn-label").mkdir()
    os.symlink(outside, out / ".fcn-label" / "records")  # records through a link
    items, problems = discover([src], out)
    res = PredictJob(Predictor(make_checkpoint(), device="cpu"), PredictOptions(out=out, workers=0)).run(items, problems)
    assert res.done == 0 and len(res.failed) == 3
    assert all("would be written outside --out" in msg for _, _, msg in res.failed)
    assert tree(outside) == []  # not even an empty folder was created there
    assert victim.read_text() == "keep me"
    assert (out / "y.png").is_file() and not (out / "y.png").is_symlink()  # the mask replaced the link itself


def test_glob_and_list_names_with_dotdot_stay_inside_out(tmp_path):
    a = tmp_path / "a" / "b"
    a.mkdir(parents=True)
    Image.fromarray(rand_image(8, 8, 1)).save(tmp_path / "a" / "top.png")
    Image.fromarray(rand_image(8, 8, 2)).save(a / "leaf.png")
    (a / "list.txt").write_text(f"../top.png\n../../a/b/leaf.png\n{tmp_path / 'a' / 'top.png'}\n")
    out = tmp_path / "out"
    items, problems = discover([str(a / ".." / "*.png"), str(a / "list.txt")], out)
    assert not problems
    for it in items:
        assert ".." not in it.rel.split("/") and not it.rel.startswith("/"), it.rel
    assert len(items) == 2  # the same two files, however they were named
    res = PredictJob(Predictor(make_checkpoint(), device="cpu"), PredictOptions(out=out, workers=0)).run(items)
    assert res.done == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents) \
        == ["a/b/leaf.png", "a/b/list.txt", "a/top.png"]


def test_output_names_never_collide():
    """Equal stems, a name equal to a disambiguated one, a mask name equal to a folder name, case."""
    names = ["x/a.jpg", "x/a.png", "x/a_jpg.bmp", "x/A.tif", "x/b.png/c.jpg", "x/b.bmp", "x/b.PNG/d.jpg",
             "x/Confidence/e.png", "x/e.png", "x/.fcn-label/f.png"]
    items = _dedupe([Item(Path(n), n.split("/", 1)[1].rsplit(".", 1)[0]) for n in names])
    rels = [it.rel for it in items]
    assert rels == ["a_jpg", "a_png", "a_jpg~2", "A_tif", "b.png/c", "b~2", "b.PNG/d", "Confidence~2/e", "e",
                    ".fcn-label~2/f"]
    files = {f"{r}{s}".lower() for r in rels for s in (".png", ".json", ".jpg")}
    folders = {r.rsplit("/", 1)[0].lower() for r in rels if "/" in r}
    assert not files & folders


def test_long_names_are_shortened_deterministically():
    long = "é" * 127  # 254 bytes
    (a,) = _dedupe([Item(Path(f"{long}.jpg"), long)])
    assert len(a.rel.encode()) <= 250 and a.rel.startswith("é" * 100) and "~" in a.rel
    (b,) = _dedupe([Item(Path(f"{long}.jpg"), long)])
    assert a.rel == b.rel


def test_temporary_names_fit_and_stale_ones_are_removed(tmp_path):
    final = tmp_path / ("n" * 250 + ".png")
    with atomic_path(final) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_bytes(b"x")
    assert final.read_bytes() == b"x"
    # a dead process's leftover is removed, a live process's (this one) is kept
    host = tmp.name.rsplit(".", 2)[-2].split("~")[0]
    dead = tmp_path / f".a.png.abcdefgh.{host}~{2**22 + 12345}.tmp"  # above the default pid_max
    live = tmp_path / f".b.png.abcdefgh.{host}~{os.getpid()}.tmp"
    other_host = tmp_path / f".c.png.abcdefgh.otherhost~{2**22 + 12345}.tmp"
    for p in (dead, live, other_host):
        p.write_bytes(b"partial")
    assert remove_stale_temp(tmp_path) == 1
    assert not dead.exists() and live.exists() and other_host.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or not hasattr(os, "fork"),
                    reason="zombies are read from Linux's /proc")
def test_a_zombie_writers_leftover_is_removed(tmp_path):
    """A run killed with -9 and re-run at once: its forked children may still be zombies, not yet
    reaped, and os.kill(pid, 0) succeeds on a zombie; their half-written files must still go."""
    import time

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the child has exited but is not reaped: a zombie
            if Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the forked child did not become a zombie")
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"x")
        host = tmp.name.rsplit(".", 2)[-2].split("~")[0]
        left = tmp_path / f".a.png.abcdefgh.{host}~{pid}.tmp"
        left.write_bytes(b"partial")
        os.kill(pid, 0)  # what a plain liveness check sees: no error, "alive"
        assert remove_stale_temp(tmp_path) == 1 and not left.exists()
    finally:
        os.waitpid(pid, 0)


def test_masks_never_overwrite_the_input_images(tmp_path, capsys):
    """`predict a.png --out .` and a list beside its images: the mask gets a new name, the photo survives."""
    from fcn_label.cli import run_cli

    ck = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(), ck)
    d = tmp_path / "photos"
    (d / "overlays").mkdir(parents=True)
    for name in ("a.png", "b.png", "overlays/c.jpg"):
        Image.fromarray(rand_image(16, 16, len(name))).save(d / name)
    (d / "list.txt").write_text("b.png\noverlays/c.jpg\n")
    before = {p: p.read_bytes() for p in d.rglob("*")  if p.is_file()}
    for inputs in ([d / "a.png"], [d / "list.txt"]):
        with pytest.raises(SystemExit) as e:
            run_cli(["predict", *map(str, inputs), "--out", str(d), "-w", str(ck), "-q", "--overlay", "--probs"])
        assert e.value.code == 0, capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in before.items())
    made = sorted(str(p.relative_to(d)) for p in d.rglob("*.png") if p not in before)
    # a's and b's masks are renamed (the input holds the plain name); the folder named like predict's
    # overlays/ becomes overlays~2/, so c's mask cannot be read as an overlay and its overlay cannot hit c.jpg
    assert made == ["a~2.png", "b~2.png", "confidence/a~2.png", "confidence/b~2.png",
                    "confidence/overlays~2/c.png", "overlays~2/c.png"]


def test_unusable_out_is_one_line(tmp_path, capsys):
    from fcn_label.cli import run_cli

    ck = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(), ck)
    (tmp_path / "in").mkdir()
    Image.fromarray(rand_image(8, 8, 0)).save(tmp_path / "in" / "a.png")
    (tmp_path / "file").write_text("x")
    for out, words in [(tmp_path / "file", "is a file, not a folder"),
                       (tmp_path / "in", "is the output folder"),
                       (tmp_path / "file" / "sub", "cannot create the folder")]:
        with pytest.raises(SystemExit) as e:
            run_cli(["predict", str(tmp_path / "in"), "--out", str(out), "-w", str(ck), "-q"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and "Traceback" not in err
        assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [next(ln for ln in err.splitlines() if words in ln)]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]
