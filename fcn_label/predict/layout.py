"""Every path predict writes under --out, spelled out once.

predict writes by it, evaluate reads predict's folders by it (which sub-folders
hold pictures, not masks), and export (later) finds masks and records by it.

    OUT/<rel>.png                      the mask (palette or greyscale index PNG)
    OUT/overlays/<rel>.jpg             --overlay
    OUT/confidence/<rel>.png           --probs
    OUT/.fcn-label/records/<time>-<host>-<pid>-<token>.jsonl   the record store: one segment per writer
                                       process, one JSON line per finished image (see records.py)
    OUT/.fcn-label/failures/<...>.jsonl  likewise one line per failed input (every shard's failures.csv lists all)
    OUT/.fcn-label/records/<rel>.json, failures/<sha1>.json   per-file records of earlier versions (still read)
    OUT/.fcn-label/reports.lock        flock'ed while a shard assembles the reports
    OUT/predictions.csv, predictions.json, failures.csv
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..markers import EXPORT_MARKER, STATE_DIR  # noqa: F401  (EXPORT_MARKER: export's, named beside ours)

RECORDS_DIR = f"{STATE_DIR}/records"
FAILURES_DIR = f"{STATE_DIR}/failures"  # named by a hash of the input path: inputs come from anywhere
REPORTS_LOCK = f"{STATE_DIR}/reports.lock"
OVERLAY_DIR, CONFIDENCE_DIR = "overlays", "confidence"
AUX_DIRS = (CONFIDENCE_DIR, OVERLAY_DIR)  # beside the masks; their PNGs are not class masks
RESERVED_DIRS = (STATE_DIR, OVERLAY_DIR, CONFIDENCE_DIR)  # an input folder so named is renamed 'name~2'
PREDICTIONS_CSV, PREDICTIONS_JSON, FAILURES_CSV = "predictions.csv", "predictions.json", "failures.csv"
# Every output file of an item is ``<rel><suffix>`` with one of these suffixes, so a name must leave
# room for the longest within the 255-byte file-name limit of common filesystems.
OUTPUT_SUFFIXES = (".png", ".json", ".jpg")


def output_files(rel: str) -> tuple[str, ...]:
    """Every file predict may write for ``rel``, relative to --out."""
    return (f"{rel}.png", f"{OVERLAY_DIR}/{rel}.jpg", f"{CONFIDENCE_DIR}/{rel}.png", f"{RECORDS_DIR}/{rel}.json")


@dataclass(frozen=True)
class OutputLayout:
    out: Path

    def mask(self, rel: str) -> Path:
        return self.out / f"{rel}.png"

    def overlay(self, rel: str) -> Path:
        return self.out / OVERLAY_DIR / f"{rel}.jpg"

    def confidence(self, rel: str) -> Path:
        return self.out / CONFIDENCE_DIR / f"{rel}.png"

    def record(self, rel: str) -> Path:
        """The per-file record of an earlier version (read for resume; new records go to segments)."""
        return self.out / RECORDS_DIR / f"{rel}.json"

    @property
    def state(self) -> Path:
        """OUT/.fcn-label: records, and the temporary files of a --backend build."""
        return self.out / STATE_DIR

    @property
    def records_dir(self) -> Path:
        return self.out / RECORDS_DIR

    def failure(self, path: str) -> Path:
        """The failure record of input ``path`` (as shown in failures.csv)."""
        return self.out / FAILURES_DIR / (hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:20] + ".json")

    @property
    def failures_dir(self) -> Path:
        return self.out / FAILURES_DIR

    @property
    def reports_lock(self) -> Path:
        return self.out / REPORTS_LOCK

    @property
    def predictions_csv(self) -> Path:
        return self.out / PREDICTIONS_CSV

    @property
    def predictions_json(self) -> Path:
        return self.out / PREDICTIONS_JSON

    @property
    def failures_csv(self) -> Path:
        return self.out / FAILURES_CSV

    def is_predict_output(self) -> bool:
        """Whether ``out`` looks like a folder predict wrote (then its aux sub-folders hold pictures)."""
        return (self.out / STATE_DIR).is_dir() or self.predictions_json.is_file()


class Palette(str, Enum):
    """Mask colours: the model's palette, the VOC colour map, or none (plain greyscale index PNG)."""

    model = "model"
    voc = "voc"
    none = "none"
