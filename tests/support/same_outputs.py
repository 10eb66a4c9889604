"""Two prediction folders hold the same outputs: every file byte for byte, except the per-image timing
column of predictions.csv and the record store (it holds timings too)."""

from __future__ import annotations

import csv
import io
from pathlib import Path


def files(out: Path) -> dict[str, bytes]:
    """Every output file except the record store."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".fcn-label" not in p.parts}


def without_seconds(csv_bytes: bytes) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    for r in rows:
        assert float(r.pop("seconds")) >= 0
    return rows


def assert_same_outputs(out: Path, ref: Path) -> None:
    got, want = files(out), files(ref)
    assert sorted(got) == sorted(want)
    assert without_seconds(got.pop("predictions.csv")) == without_seconds(want.pop("predictions.csv"))
    assert got == want  # masks, predictions.json, failures.csv: byte for byte
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written left
