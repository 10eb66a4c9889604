"""The sink of a predict run: one image's outputs and record, and the failure records, under --out only.

Per image: the mask, --overlay, --probs, then the record line (last: its presence means the image is
done). Every folder is checked before anything is created in it, so nothing lands outside --out even
through a symbolic link. One sink serves a process; a forked process calls :meth:`Sink.reopen` to get
its own record segments. With ``remote`` (--out on an object store) each output is one object and the
records are buffered segment objects (:mod:`fcn_label.predfolder.remote`); ``layout`` is then only
the job's local mirror, which the sink never writes.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..guard import Failure, failure_message, guarded
from ..images import InputError
from ..metrics import confusion_matrix, scores
from ..predfolder.layout import FAILURES_DIR, RECORDS_DIR, OutputLayout, output_files
from ..predfolder.outputs import (coco_annotations, encode_confidence, encode_overlay, encode_png, write_confidence,
                                  write_mask, write_overlay)
from ..predfolder.records import SegmentWriter, shown
from ..predfolder.remote import RemoteOut
from ..storage import explain
from .discover import Item
from .options import PredictOptions
from .predictor import Prediction
from .tally import Outcome

# Write errors that say --out as a whole is unusable, not this one image.
OUT_UNUSABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class HeldRecords(list):
    """Image records kept in memory (:meth:`Sink.hold_records`); stands in for a segment writer."""

    def close(self) -> None:
        pass


class Sink:
    """Writes into ``layout.out`` and never elsewhere."""

    def __init__(self, layout: OutputLayout, options: PredictOptions, classes: Sequence[str],
                 palette: Sequence[Sequence[int]] | None, overlay_palette: Sequence[Sequence[int]],
                 gt=None, ignore_index: int | None = None, remote: RemoteOut | None = None):
        self.layout, self.o = layout, options
        self.remote = remote
        self.classes = list(classes)
        self.palette, self.overlay_palette = palette, overlay_palette
        self.gt, self.ignore_index = gt, ignore_index
        self.stop_message = ""  # set by the first write --out refused (disk full): later writes are not tried
        self.reopen()

    def reopen(self) -> None:
        """Fresh lock, folder cache and record / failure segments: at start, and in a forked process."""
        self._lock = threading.Lock()
        self._checked_dirs: set[Path] = set()
        if self.remote is not None:
            self.records = self.remote.segment_writer(RECORDS_DIR)
            self.failures = self.remote.segment_writer(FAILURES_DIR)
        else:
            self.records = SegmentWriter(self.layout.records_dir, self.checked)
            self.failures = SegmentWriter(self.layout.failures_dir, self.checked)

    def close(self) -> None:
        self.records.close()
        self.failures.close()

    def __getstate__(self) -> dict:
        """A sink sent to a worker of a distributed runner (Ray): its settings; the lock, folder cache and
        record segments are made anew there (:meth:`reopen`)."""
        state = self.__dict__.copy()
        for name in ("_lock", "_checked_dirs", "records", "failures"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.reopen()

    def hold_records(self) -> list[dict]:
        """From now on keep the image records :meth:`write` makes in the returned list, not in --out's record
        store: a distributed runner's worker sends them to its driver, the one process that appends them, so
        an image whose task Ray ran twice is still counted once."""
        held = HeldRecords()
        self.records = held
        return held

    def append_record(self, rec: dict) -> None:
        """Append the record :meth:`write_outputs` made in another process, now that its outputs are in place."""
        self.records.append(rec)

    def checked(self, path: Path) -> Path:
        """Create ``path``'s folder, refusing one that resolves outside --out (e.g. through a symlinked folder).

        The check runs before anything is created (resolve() follows the links of the
        part that exists), so not even an empty folder appears outside --out.
        """
        if path.parent in self._checked_dirs:  # once per folder: resolve() costs a stat per path part
            return path
        out = self.layout.out
        root = out.resolve()
        real = path.parent.resolve()
        if real != root and root not in real.parents:
            raise InputError(f"{path}: would be written outside --out {out} (through a symbolic link); remove the link")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._checked_dirs.add(path.parent)
        return path

    def record_failure(self, f: Failure) -> None:
        self.failures.append({"path": f.path, "stage": f.stage, "reason": f.reason})

    def write(self, it: Item, image: np.ndarray | None, pred: Prediction, seconds: float) -> None:
        """Mask, --overlay, --probs, then the record line (last: its presence means the image is done)."""
        rec = self.write_outputs(it, image, pred, seconds)
        self.records.append(rec)  # supersedes a failure of an earlier run: the reports list done images only

    def write_outputs(self, it: Item, image: np.ndarray | None, pred: Prediction, seconds: float) -> dict:
        """Mask, --overlay and --probs written; returns the image's record, for the caller to append only
        now that its outputs are in place (a runner on other machines sends it back to the driver)."""
        if self.remote is not None:  # each output one object: the bytes the files would hold
            mask, overlay, confidence = output_files(it.rel)
            self.remote.put(mask, encode_png(pred.labels, self.palette))
            if self.o.overlay:
                self.remote.put(overlay, encode_overlay(image, pred.labels, self.overlay_palette))
            if self.o.probs:
                self.remote.put(confidence, encode_confidence(pred.confidence))
        else:
            write_mask(self.checked(self.layout.mask(it.rel)), pred.labels, self.palette)
            if self.o.overlay:
                write_overlay(self.checked(self.layout.overlay(it.rel)), image, pred.labels, self.overlay_palette)
            if self.o.probs:
                write_confidence(self.checked(self.layout.confidence(it.rel)), pred.confidence)
        n = len(self.classes)
        h, w = pred.labels.shape
        counts = np.bincount(pred.labels.ravel(), minlength=n)
        rec = {
            "path": shown(str(it.path)),  # a URL input's path is already shown without credentials
            "file_name": f"{it.rel}.png",
            "width": int(w),
            "height": int(h),
            "seconds": round(seconds, 4),
            "classes": {self.classes[c]: round(float(counts[c]) / (h * w), 6) for c in np.nonzero(counts)[0]},
            "mean_confidence": round(float(pred.confidence.mean()), 6),
            "low_confidence_fraction": round(float((pred.confidence < self.o.low_confidence).mean()), 6),
        }
        if self.gt is not None:
            rec["gt"] = self._gt_metrics(it, pred.labels)
        if self.o.coco:  # last: the reports copy their JSON text from the line (records.split_line)
            rec["annotations"] = coco_annotations(pred.labels, pred.confidence, n)
        return rec

    def try_write(self, it: Item, image: np.ndarray | None, pred: Prediction, seconds: float) -> tuple[Outcome, str]:
        """The image's boundary: :meth:`write`, and what became of it, with the one-line reason when it
        failed or stopped the run. Runs in a writer thread or an encoding process; after one STOPPED it
        tries nothing more."""
        if self.stop_message:
            return Outcome.STOPPED, self.stop_message
        try:
            self.write(it, image, pred, seconds)
        except InputError as e:
            return Outcome.FAILED, str(e)
        except OSError as e:
            if self.remote is not None:
                return Outcome.FAILED, "cannot write output: " + explain(self.remote.url, e, "writing")
            if e.errno in OUT_UNUSABLE:  # no image after this one could be written either: stop, keep what is done
                self.stop_message = (f"--out {self.layout.out}: {e.strerror}; make room (or fix --out) and re-run "
                                     "the same command: finished images are kept and skipped")
                return Outcome.STOPPED, self.stop_message
            return Outcome.FAILED, f"cannot write output ({e.strerror or e}); check free space and permissions of --out"
        except Exception as e:  # nothing raised for one image (an encoder bug) stops the job
            return Outcome.FAILED, failure_message(it.path, e)
        return Outcome.DONE, ""

    def _gt_metrics(self, it: Item, labels: np.ndarray) -> dict:
        if it.rel not in self.gt.items:
            where = self.gt.source / f"{it.rel}.png" if self.gt.layout == "masks" else f"named {it.rel} in {self.gt.source}"
            return {"error": f"no ground truth {where}"}
        gt_path = self.gt.path(it.rel)
        gt, err = guarded(gt_path, self.gt.load, it.rel)
        if err is not None:
            return {"error": err}
        if gt.shape != labels.shape:
            return {"error": f"{gt_path}: ground truth is {gt.shape[1]}x{gt.shape[0]}, image {labels.shape[1]}x{labels.shape[0]}"}
        s = scores(confusion_matrix(gt, labels, len(self.classes), self.ignore_index))
        return {
            "pixel_accuracy": s.pixel_accuracy,
            "mean_iou": s.mean_iou,
            "iou": [None if np.isnan(v) else float(v) for v in s.iou],
        }
