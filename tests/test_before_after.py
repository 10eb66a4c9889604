"""The package restructure (issue 11) changes nothing a user sees: predict and evaluate on the shared
fixtures and examples/ write byte-identical files to those of the code before it (fd81e84).

The reference is tests/data/before_after.json: for every file each run writes, its SHA-256, taken
from the pre-restructure code by ``python tests/test_before_after.py --record``. Timings are the
only thing taken out before hashing (the ``seconds`` column of predictions.csv and the ``seconds``
field of the per-image records); every other byte counts, and so do the exit codes and the
evaluate --format json document. The only files left out are the state files of ADDED_SINCE.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "data" / "before_after.json"
TIMING = "seconds"
# State files issue 12 added under --out on purpose (sharded reports: the flock'ed lock file and one
# record per failed input); they are not in the pre-restructure reference, and every other byte is.
ADDED_SINCE = (".fcn-label/reports.lock", ".fcn-label/failures/")
RECORDS = ".fcn-label/records"


def _normalised(path: Path, roots: dict[str, Path]) -> bytes:
    data = path.read_bytes()
    if path.suffix in (".csv", ".json"):  # paths of the temporary folder and the data depend on the machine
        for tag, root in roots.items():
            data = data.replace(str(root).encode(), tag.encode())
    if path.name == "predictions.csv":
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        if rows and TIMING in rows[0]:
            k = rows[0].index(TIMING)
            rows = [r[:k] + r[k + 1:] for r in rows]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode("utf-8")
    if path.suffix == ".json" and ".fcn-label" in path.parts:
        rec = json.loads(data)
        rec.pop(TIMING, None)
        return json.dumps(rec, sort_keys=True).encode("utf-8")
    return data


def _record_content(rec: dict, roots: dict[str, Path]) -> bytes:
    text = json.dumps(rec)
    for tag, root in roots.items():
        text = text.replace(json.dumps(str(root))[1:-1], tag)
    rec = json.loads(text)
    rec.pop(TIMING, None)
    return json.dumps(rec, sort_keys=True).encode("utf-8")


def _store_records(folder: Path) -> dict[str, dict]:
    """The record of each image in the record store (append-only segments since issue 14), read with
    the json module independently of the package: whole lines only, later segments (by name) and later
    lines win. Keyed as the per-file records the reference was taken from (``records/<rel>.json``)."""
    recs = {}
    for seg in sorted((folder / RECORDS).glob("*.jsonl")):
        for line in seg.read_bytes().split(b"\n")[:-1]:
            rec = json.loads(line)
            recs[f"{RECORDS}/{rec['file_name'][:-len('.png')]}.json"] = rec
    return recs


def _digest(folder: Path, roots: dict[str, Path]) -> dict[str, str]:
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(_normalised(p, roots)).hexdigest()
             for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.relative_to(folder).as_posix().startswith(ADDED_SINCE + (f"{RECORDS}/",))}
    # the records: compared per image by content (the store's files are per process, not per image)
    files.update({k: hashlib.sha256(_record_content(r, roots)).hexdigest()
                  for k, r in sorted(_store_records(folder).items())})
    return dict(sorted(files.items()))


def _runs(fixtures: Path, examples: Path, tmp: Path) -> list[tuple[str, list[str]]]:
    voc, coco = fixtures / "voc", fixtures / "coco"
    return [
        ("predict_examples", ["predict", str(examples), "--out", str(tmp / "predict_examples"), "-q",
                              "--overlay", "--probs"]),
        ("predict_voc_gt", ["predict", str(voc / "JPEGImages"), "--out", str(tmp / "predict_voc_gt"), "-q",
                            "--gt", str(voc / "SegmentationClass"), "--palette", "voc"]),
        ("predict_coco_flip", ["predict", str(coco / "images"), "--out", str(tmp / "predict_coco_flip"), "-q",
                               "--flip", "--palette", "none"]),
        ("evaluate_voc_pred", ["evaluate", "--pred", str(tmp / "predict_voc_gt"), "--gt", str(voc), "-q",
                               "--num-classes", "21", "--out", str(tmp / "evaluate_voc_pred"), "--format", "json"]),
        ("evaluate_voc_weights", ["evaluate", "--weights", "fcn8s-compact-camvid", "--gt", str(voc), "-q",
                                  "--out", str(tmp / "evaluate_voc_weights"), "--format", "json"]),
        ("evaluate_coco_json", ["evaluate", "--pred", str(tmp / "predict_coco_flip" / "predictions.json"), "-q",
                                "--gt", str(coco / "annotations.json"), "--out", str(tmp / "evaluate_coco_json"),
                                "--format", "json"]),
        ("evaluate_coco_masks", ["evaluate", "--pred", str(tmp / "predict_coco_flip"), "-q", "--num-classes", "81",
                                 "--gt", str(coco / "annotations.json"), "--out", str(tmp / "evaluate_coco_masks"),
                                 "--format", "json"]),
    ]


def _run_all(fixtures: Path, examples: Path, tmp: Path, capsys) -> dict:
    from fcn_label.cli import run_cli

    result = {}
    for name, argv in _runs(fixtures, examples, tmp):
        try:
            run_cli(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr().out if capsys is not None else ""
        entry = {"exit": code, "files": _digest(tmp / name, {"<TMP>": tmp, "<FIXTURES>": fixtures, "<REPO>": REPO}) if (tmp / name).is_dir() else {}}
        if "--format" in argv and code == 0:
            entry["stdout_json"] = json.loads(out)
        result[name] = entry
    return result


def _stdout_json_comparable(d: dict, roots: dict[str, Path]) -> dict:
    d = dict(d)
    d.pop("report_dir", None)  # names the temporary folder
    text = json.dumps(d, sort_keys=True)
    for tag, root in roots.items():
        text = text.replace(str(root), tag)
    return json.loads(text)


def test_predict_and_evaluate_outputs_are_byte_identical_to_before_the_restructure(tmp_path, fixtures_dir, capsys):
    ref = json.loads(REFERENCE.read_text())
    got = _run_all(fixtures_dir, REPO / "examples", tmp_path, capsys)
    roots = {"<TMP>": tmp_path, "<FIXTURES>": fixtures_dir, "<REPO>": REPO}
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name]["exit"] == ref[name]["exit"], name
        assert got[name]["files"] == ref[name]["files"], name
        if "stdout_json" in ref[name]:
            assert _stdout_json_comparable(got[name]["stdout_json"], roots) == ref[name]["stdout_json"], name


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import FIXTURES

    class _Cap:  # capsys stand-in: run_cli prints the JSON on stdout
        def __init__(self):
            self.buf = io.StringIO()

        def readouterr(self):
            v, self.buf = self.buf.getvalue(), io.StringIO()
            return type("R", (), {"out": v})()

    cap = _Cap()
    import rich.console

    with tempfile.TemporaryDirectory() as d:
        ref = {}
        for name, argv in _runs(FIXTURES, REPO / "examples", Path(d)):
            from fcn_label.cli import run_cli
            import fcn_label.cli.evaluate as cev

            cev.stdout = rich.console.Console(file=cap.buf, highlight=False, width=10_000)
            try:
                run_cli(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            entry = {"exit": code, "files": _digest(Path(d) / name, {"<TMP>": Path(d), "<FIXTURES>": FIXTURES, "<REPO>": REPO}) if (Path(d) / name).is_dir() else {}}
            out = cap.readouterr().out
            if "--format" in argv and code == 0:
                entry["stdout_json"] = _stdout_json_comparable(
                    json.loads(out), {"<TMP>": Path(d), "<FIXTURES>": FIXTURES, "<REPO>": REPO})
            ref[name] = entry
    REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
