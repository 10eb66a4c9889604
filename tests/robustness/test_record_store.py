"""The append-only record store: torn last lines, duplicates, folders of earlier formats (read, or
refused in one line), and report assembly at scale with bounded memory."""

from __future__ import annotations

import csv
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from fcn_label.predict import PredictJob, PredictOptions, Predictor
from fcn_label.predict.discover import Item, discover
from fcn_label.predfolder.layout import OutputLayout
from fcn_label.predfolder.reports import write_reports
from support.helpers import make_checkpoint, rand_image

N = 6


@pytest.fixture(scope="module")
def predictor():
    return Predictor(make_checkpoint(), device="cpu")


def _inputs(root: Path) -> Path:
    inp = root / "in"
    (inp / "sub").mkdir(parents=True)
    for k in range(N):
        Image.fromarray(rand_image(20 + k, 24, k)).save(inp / ("sub" if k % 2 else "") / f"p{k}.png")
    (inp / "bad.png").write_bytes(b"not an image")
    return inp


def _run(predictor, inp: Path, out: Path, **kw):
    items, problems = discover([inp], out)
    kw.setdefault("encoders", 0)  # these tests edit the one segment a single writing process makes
    kw.setdefault("procs", 1)
    return PredictJob(predictor, PredictOptions(out=out, workers=0, **kw)).run(items, problems)


def _segments(out: Path) -> list[Path]:
    return sorted((out / ".fcn-label" / "records").glob("*.jsonl"))


def _lines(out: Path) -> list[bytes]:
    return [l for s in _segments(out) for l in s.read_bytes().splitlines(keepends=True)]


def _json_reports(out: Path) -> tuple[bytes, bytes]:
    return (out / "predictions.json").read_bytes(), (out / "failures.csv").read_bytes()


def _csv_without_seconds(out: Path) -> list[dict]:
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8", newline="")))
    for r in rows:
        r.pop("seconds")
    return rows


def test_one_line_per_finished_image_and_its_mask_is_there(tmp_path, predictor):
    out = tmp_path / "out"
    res = _run(predictor, _inputs(tmp_path), out)
    assert (res.done, len(res.failed)) == (N, 1)
    recs = [json.loads(l) for l in _lines(out)]
    assert sorted(r["file_name"] for r in recs) == sorted(f"{'sub/' if k % 2 else ''}p{k}.png" for k in range(N))
    for r in recs:  # a line implies a finished mask of the recorded size
        assert Image.open(out / r["file_name"]).size == (r["width"], r["height"])
    fails = [json.loads(l) for s in (out / ".fcn-label" / "failures").glob("*.jsonl") for l in s.read_bytes().splitlines()]
    assert [Path(f["path"]).name for f in fails] == ["bad.png"]


def test_torn_last_line_is_ignored_and_that_image_redone(tmp_path, predictor):
    inp, out = _inputs(tmp_path), tmp_path / "out"
    _run(predictor, inp, out)
    want, want_csv = _json_reports(out), _csv_without_seconds(out)
    (seg,) = _segments(out)
    lines = seg.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[-1])["file_name"]
    seg.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # kill -9 mid-write
    (out / "predictions.json").unlink()
    res = _run(predictor, inp, out)
    assert (res.done, res.skipped) == (1, N - 1)
    new = [json.loads(l) for l in _segments(out)[-1].read_bytes().splitlines()]
    assert [r["file_name"] for r in new] == [victim]
    assert _json_reports(out) == want and _csv_without_seconds(out) == want_csv
    assert _run(predictor, inp, out).skipped == N


def test_duplicate_lines_resolve_to_the_last_whatever_the_order_of_writing(tmp_path, predictor):
    inp, out = _inputs(tmp_path), tmp_path / "out"
    _run(predictor, inp, out)
    (seg,) = _segments(out)
    lines = seg.read_bytes().splitlines(keepends=True)
    later = json.loads(lines[0])
    later["seconds"] = 123.5  # a later run's record of the same image (e.g. --overwrite)
    seg.write_bytes(seg.read_bytes() + lines[1])  # an identical duplicate
    (seg.parent / ("ffffffffffffffff-" + seg.name.split("-", 1)[1])).write_text(json.dumps(later) + "\n")
    res = _run(predictor, inp, out)
    assert (res.done, res.skipped) == (0, N)
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8", newline="")))
    assert len(rows) == N and len({r["mask"] for r in rows}) == N
    assert [r["seconds"] for r in rows if r["mask"] == later["file_name"]] == ["123.5"]
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == N


def test_a_folder_of_format_1_resumes_and_gets_the_format_file(tmp_path, predictor):
    """Version 1 (segments, no format file, failure lines without a stage) reads as today and resumes."""
    inp, out = _inputs(tmp_path), tmp_path / "out"
    _run(predictor, inp, out)
    want, want_csv = _json_reports(out), _csv_without_seconds(out)
    (out / ".fcn-label" / "format.json").unlink()
    for seg in (out / ".fcn-label" / "failures").glob("*.jsonl"):
        lines = [json.loads(l) for l in seg.read_bytes().splitlines()]
        seg.write_text("".join(json.dumps({"path": f["path"], "reason": f["reason"]}) + "\n" for f in lines))
    from fcn_label.predfolder.records import read_failures

    assert [(Path(p).name, stage) for p, (stage, _) in read_failures(OutputLayout(out)).items()] == [
        ("bad.png", "predict")]
    res = _run(predictor, inp, out, overwrite=False)
    assert (res.done, res.skipped, len(res.failed)) == (0, N, 1)
    assert _csv_without_seconds(out) == want_csv and _json_reports(out) == want
    assert json.loads((out / ".fcn-label" / "format.json").read_text()) == {
        "format": "fcn-label prediction folder", "version": 2}


def _to_per_file_records(out: Path) -> None:
    """Rewrite the store as versions before the record store left it: records/<rel>.json, no format file."""
    state = out / ".fcn-label"
    (state / "format.json").unlink()
    for seg in _segments(out):
        for l in seg.read_bytes().splitlines():
            r = json.loads(l)
            p = state / "records" / (r["file_name"][: -len(".png")] + ".json")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(r))
        seg.unlink()


@pytest.mark.parametrize("verb", ["predict", "export", "review", "select", "evaluate"])
def test_per_file_records_and_newer_formats_are_refused_in_one_line(tmp_path, predictor, verb, capsys):
    from fcn_label.checkpoint import save_checkpoint

    inp, out = _inputs(tmp_path), tmp_path / "out"
    _run(predictor, inp, out)
    save_checkpoint(predictor.checkpoint, tmp_path / "m.pt")
    argv = {"predict": ["predict", str(inp), "--out", str(out), "-w", str(tmp_path / "m.pt"), "-q"],
            "export": ["export", str(out), "--format", "cvat", "--out", str(tmp_path / "x")],
            "review": ["review", str(out), "--out", str(tmp_path / "r"), "-q"],
            "select": ["select", str(out), "--k", "2", "--out", str(tmp_path / "next.txt")],
            "evaluate": ["evaluate", "--gt", str(out), "--pred", str(out), "--num-classes", "4"]}[verb]
    newer = out / ".fcn-label" / "format.json"
    newer.write_text(json.dumps({"format": "fcn-label prediction folder", "version": 99}))
    code, err = _cli_err(capsys, argv)
    assert code == 2 and "newer fcn-label" in err and "upgrade" in err and _error_lines(err) == 1, err
    _to_per_file_records(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, err = _cli_err(capsys, argv)
    assert code == 2 and "re-run predict with this version" in err and _error_lines(err) == 1, err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written into it


def _error_lines(err: str) -> int:
    """Lines of ``err`` that are not predict's opening banner; a traceback counts many."""
    return len([l for l in err.strip().splitlines() if not l.startswith("fcn-label: ")])


def _cli_err(capsys, argv) -> tuple[int, str]:
    from fcn_label.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    return e.value.code, capsys.readouterr().err


def test_fifty_thousand_records_assemble_in_item_order_with_bounded_memory(tmp_path):
    """Reports stream: memory does not grow with the number of records (here ~40 MB of them)."""
    n, out = 50_000, tmp_path / "out"
    layout = OutputLayout(out)
    layout.records_dir.mkdir(parents=True)
    rels = [f"{i // 1000:03d}/{i:06d}" for i in range(n)]
    counts = list(range(1, 120))
    # written in an order unlike the items' (two processes), read back in item order
    for part in (0, 1):
        with open(layout.records_dir / f"000000000000000{part}-h-1-ab.jsonl", "w") as f:
            for i in range(part, n, 2)[::-1]:
                f.write(json.dumps({"path": f"/in/{rels[i]}.jpg", "file_name": f"{rels[i]}.png", "width": 64,
                                    "height": 48, "seconds": 0.01, "classes": {"a": 0.25, "b": 0.75},
                                    "mean_confidence": 0.9, "low_confidence_fraction": 0.1,
                                    "annotations": [{"category_id": c, "segmentation": {"size": [48, 64],
                                                     "counts": counts}, "score": 0.5} for c in (1, 2)]}) + "\n")
    items = [Item(Path(f"/in/{r}.jpg"), r) for r in rels]
    tracemalloc.start()
    write_reports(layout, items, [], ["a", "b"], coco=True, gt=False, model_name="m")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    data_bytes = sum(p.stat().st_size for p in layout.records_dir.iterdir())
    assert data_bytes > 35_000_000
    assert peak < 30_000_000, peak  # holding the records (parsed) would take several times data_bytes
    coco = json.loads(layout.predictions_json.read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"{r}.png" for r in rels]
    assert [im["id"] for im in coco["images"]] == list(range(1, n + 1))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 2 * n + 1))
    assert [a["image_id"] for a in coco["annotations"][:4]] == [1, 1, 2, 2]
    assert coco["annotations"][-1]["segmentation"]["counts"] == counts
    with open(layout.predictions_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["mask"] for r in rows] == [f"{r}.png" for r in rels]
    assert rows[0]["classes"] == "b:0.7500;a:0.2500"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".fcn-label"]  # no spool left behind
