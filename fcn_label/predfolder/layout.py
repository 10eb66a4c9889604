"""Every path of the prediction folder (predict's --out), spelled out once.

predict writes by it; evaluate, review, select and export read through
:mod:`fcn_label.predfolder.reader`, which finds everything by it. The format is
described for users in docs/prediction-folder.md.

    OUT/<rel>.png                      the mask (palette or greyscale index PNG)
    OUT/overlays/<rel>.jpg             --overlay
    OUT/confidence/<rel>.png           --probs
    OUT/.fcn-label/records/<time>-<host>-<pid>-<token>.jsonl   the record store: one segment per writer
                                       process, one JSON line per finished image (see records.py); on an
                                       object store <...>-<token>-<seq>.jsonl, immutable (see remote.py)
    OUT/.fcn-label/failures/<...>.jsonl  likewise one line per failed input (every shard's failures.csv lists all)
    OUT/.fcn-label/format.json         {"format": "fcn-label prediction folder", "version": 2}
    OUT/.fcn-label/reports.lock        flock'ed while a shard assembles the reports (a folder; not on a store)
    OUT/predictions.csv, predictions.json, failures.csv
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..markers import EXPORT_MARKER, STATE_DIR  # noqa: F401  (EXPORT_MARKER: export's, named beside ours)

RECORDS_DIR = f"{STATE_DIR}/records"
FAILURES_DIR = f"{STATE_DIR}/failures"
FORMAT_FILE = f"{STATE_DIR}/format.json"  # the folder's format version (absent: version 1)
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
    return (f"{rel}.png", f"{OVERLAY_DIR}/{rel}.jpg", f"{CONFIDENCE_DIR}/{rel}.png")


@dataclass(frozen=True)
class OutputLayout:
    out: Path

    def mask(self, rel: str) -> Path:
        return self.out / f"{rel}.png"

    def overlay(self, rel: str) -> Path:
        return self.out / OVERLAY_DIR / f"{rel}.jpg"

    def confidence(self, rel: str) -> Path:
        return self.out / CONFIDENCE_DIR / f"{rel}.png"

    @property
    def state(self) -> Path:
        """OUT/.fcn-label: records, and the temporary files of a --backend build."""
        return self.out / STATE_DIR

    @property
    def records_dir(self) -> Path:
        return self.out / RECORDS_DIR

    @property
    def failures_dir(self) -> Path:
        return self.out / FAILURES_DIR

    @property
    def format_file(self) -> Path:
        return self.out / FORMAT_FILE

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
