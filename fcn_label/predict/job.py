"""A predict job over many items: resume, background decoding, inference by size, outputs, records.

Each finished image appends one JSON line to this process's record segment (see
:mod:`.records`) after its mask is in place. A re-run skips images with a record,
and the reports are always assembled from the records (:mod:`.reports`).

Per image, the work is three stages, each a method, so that they can later run
in worker processes: :meth:`PredictJob.decode` (file -> RGB array, behind the
per-file guard), :meth:`PredictJob.infer` (same-size arrays -> predictions) and
:meth:`PredictJob.write` (prediction -> mask, extras and record). They are scheduled by
:class:`.pipeline.Pipeline` in one process, or in each process :func:`.processes.run_in_procs` forks.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..classes import voc_palette
from ..errors import ConfigError
from ..guard import failure_message, guarded
from ..images import InputError, remove_stale_temp_in
from ..metrics import confusion_matrix, scores
from .discover import Item, shown
from .layout import AUX_DIRS, OutputLayout, Palette
from .options import JobResult, PredictOptions
from .outputs import coco_annotations, write_confidence, write_mask, write_overlay
from .pipeline import Pipeline
from .predictor import Prediction, Predictor, read_for_model
from .processes import PROCS_BACKENDS, can_fork, default_procs, run_in_procs
from .records import RecordIndex, SegmentWriter, scan_records
from .reports import load_records, reports_lock, write_reports


# Write errors that say --out as a whole is unusable, not this one image.
_OUT_UNUSABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class PredictJob:
    """Predict every item, writing outputs under ``options.out`` and never elsewhere."""

    def __init__(self, predictor: Predictor, options: PredictOptions,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_failure: Callable[[str, str], None] | None = None):
        self.p = predictor
        self.o = options
        self.out = Path(options.out)
        self.on_progress = on_progress or (lambda done, total: None)
        self.on_failure = on_failure or (lambda path, reason: None)
        self.layout = OutputLayout(self.out)
        ck = predictor.checkpoint
        self.classes = list(ck.classes)
        try:
            palette = Palette(getattr(options.palette, "value", options.palette))
        except ValueError:
            raise ConfigError(f"unknown palette {options.palette!r}; choose model, voc or none") from None
        self.palette = {Palette.model: ck.palette, Palette.voc: voc_palette(), Palette.none: None}[palette]
        self.ignore_index = ck.ignore_index if options.ignore_index is None else options.ignore_index
        self.gt = None
        if options.gt is not None:  # any layout the datasets package knows, read once
            from ..datasets import GroundTruth

            self.gt = GroundTruth(options.gt, ignore_index=self.ignore_index)
        self._lock = threading.Lock()
        self._records = SegmentWriter(self.layout.records_dir, self._checked)
        self._failures = SegmentWriter(self.layout.failures_dir, self._checked)
        self._index: RecordIndex | None = None
        self._checked_dirs: set[Path] = set()
        self._stop_msg = ""  # set by the first write --out refused (disk full): later writes are not tried

    # -- paths -----------------------------------------------------------------
    def mask_path(self, it: Item) -> Path:
        return self.layout.mask(it.rel)

    def _checked(self, path: Path) -> Path:
        """Create ``path``'s folder, refusing one that resolves outside --out (e.g. through a symlinked folder).

        The check runs before anything is created (resolve() follows the links of the
        part that exists), so not even an empty folder appears outside --out.
        """
        if path.parent in self._checked_dirs:  # once per folder: resolve() costs a stat per path part
            return path
        root = self.out.resolve()
        real = path.parent.resolve()
        if real != root and root not in real.parents:
            raise InputError(f"{path}: would be written outside --out {self.out} (through a symbolic link); remove the link")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._checked_dirs.add(path.parent)
        return path

    def scan(self, items: Sequence[Item]) -> RecordIndex:
        """Which of ``items`` have a record: one sequential read of the segments, no per-image stat."""
        self._index = scan_records(self.layout, [it.rel for it in items])
        self._index_pos = {it.rel: i for i, it in enumerate(items)}
        return self._index

    def is_done(self, it: Item) -> bool:
        """Whether ``it`` has a record, as of the last :meth:`scan` (for a few items; run() uses the index)."""
        if self._index is None or it.rel not in self._index_pos:
            self.scan([it])
        return self._index.done(self._index_pos[it.rel])

    # -- the three per-image stages ----------------------------------------------
    def decode(self, it: Item) -> tuple[np.ndarray | None, str | None]:
        """File -> RGB array, or the one-line reason it cannot be used; never raises."""
        return guarded(it.path, read_for_model, it.path, self.o.max_pixels)

    def infer(self, arrays: list[tuple[int, np.ndarray]]) -> list[tuple[int, Prediction]]:
        """``(key, Prediction)`` for one batch the loop formed: same-size arrays within the predictor's
        batch limit, or a single image to tile. The loop's window is the only batching by size."""
        keys, batch = [k for k, _ in arrays], [a for _, a in arrays]
        if len(batch) == 1 and self.p.needs_tiling(batch[0].shape):
            return [(keys[0], self.p.predict_tiled(batch[0]))]
        return list(zip(keys, self.p.predict_batch(self.p.preprocess(batch))))

    def write(self, it: Item, image: np.ndarray, pred: Prediction, seconds: float) -> None:
        """Mask, --overlay, --probs, then the record line (last: its presence means the image is done)."""
        self._finish(it, image, pred, seconds)

    def _finish(self, it: Item, image: np.ndarray, pred: Prediction, seconds: float) -> None:
        mask_path = self._checked(self.mask_path(it))
        write_mask(mask_path, pred.labels, self.palette)
        if self.o.overlay:
            write_overlay(self._checked(self.layout.overlay(it.rel)), image, pred.labels,
                          self.palette or self.p.checkpoint.palette)
        if self.o.probs:
            write_confidence(self._checked(self.layout.confidence(it.rel)), pred.confidence)
        n = len(self.classes)
        h, w = pred.labels.shape
        counts = np.bincount(pred.labels.ravel(), minlength=n)
        rec = {
            "path": shown(str(it.path)),
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
        self._records.append(rec)  # supersedes a failure of an earlier run: the reports list done images only

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

    # -- the run ---------------------------------------------------------------
    def run(self, items: Sequence[Item], problems: Sequence[tuple[str, str]] = ()) -> JobResult:
        t0 = time.perf_counter()
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out}: is a file, not a folder; choose another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot create the folder ({e.strerror or e}); check the path") from None
        rank, world = self.o.shard
        if not 0 <= rank < world:
            raise ConfigError(f"--shard {rank}/{world}: index must be in 0..{world - 1}")
        all_items = list(items)
        mine = [it for i, it in enumerate(all_items) if i % world == rank]
        res = JobResult(total=len(mine))
        try:
            for path, reason in problems:
                self._fail(res, path, reason)
            todo = []
            if self.o.overwrite:
                todo = mine
            else:
                idx = scan_records(self.layout, [it.rel for it in mine])
                todo = [it for i, it in enumerate(mine) if not idx.done(i)]
                res.skipped = len(mine) - len(todo)
                del idx
            self._remove_stale_temp(todo)
            self.on_progress(res.skipped, res.total)
            if todo:
                self._predict(todo, res)
        finally:
            self._records.close()
            self._failures.close()
        res.seconds = time.perf_counter() - t0
        try:
            self._checked(self.layout.reports_lock)  # never through a symlinked .fcn-label outside --out
            with reports_lock(self.layout):  # shards finishing together: the last one sees every record
                self.write_reports(all_items, res)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot write the reports ({e.strerror or e}); make room and re-run "
                             "the same command: finished images are kept and skipped") from None
        finally:
            self._records.close()
            self._failures.close()
        return res

    def _remove_stale_temp(self, todo: Sequence[Item]) -> int:
        """Delete what killed runs of this host were writing, in the folders this run writes to only
        (walking every output folder of a million-image --out would take minutes); a live run's files are kept."""
        folders = {self.out, self.out / ".fcn-label", self.layout.records_dir, self.layout.failures_dir}
        for d in {it.rel.rpartition("/")[0] for it in todo}:
            base = self.out / d if d else self.out
            folders.add(base)
            folders.update(self.out / aux / d for aux in AUX_DIRS)
        return sum(remove_stale_temp_in(folder) for folder in folders)

    def _fail(self, res: JobResult, path: str, reason: str) -> None:
        path, reason = shown(str(path)), shown(reason)
        msg = reason if reason.startswith(path) else f"{path}: {reason}"
        with self._lock:
            res.failed.append((str(path), msg))
        try:  # kept as a record too, so the other shards' failures.csv lists it
            self._failures.append({"path": path, "reason": msg})
        except (OSError, InputError):
            pass  # still in this run's failures.csv
        self.on_failure(str(path), msg)

    def procs_for(self, n_todo: int) -> int:
        """How many inference processes this run forks (1: none), checking an explicit --procs."""
        asked = self.o.procs
        if asked is None:
            procs = default_procs(self.p.device, self.p.backend)
        else:
            procs = max(1, asked)
            if procs > 1 and self.p.device.type != "cpu":
                raise ConfigError(f"--procs {procs} splits CPU inference across processes; on {self.p.device} use "
                                  "--procs 1 (the GPU batches instead)")
            if procs > 1 and self.p.backend not in PROCS_BACKENDS:
                raise ConfigError(f"--procs {procs} works with --backend {' or '.join(PROCS_BACKENDS)}; "
                                  f"--backend {self.p.backend} keeps thread pools a fork cannot copy: use --procs 1")
            if procs > 1 and not can_fork():
                procs = 1  # Windows: no fork
        return max(1, min(procs, n_todo))

    def _predict(self, todo: list[Item], res: JobResult) -> None:
        procs = self.procs_for(len(todo))
        if procs > 1:
            run_in_procs(self, todo, res, procs)
        else:
            self._predict_here(todo, res)

    def _predict_here(self, todo: list[Item], res: JobResult) -> None:
        """This process's pipeline (:class:`.pipeline.Pipeline`): decoding workers, the network, writers."""
        Pipeline(self, todo, res).run()

    def try_write(self, it: Item, image: np.ndarray | None, pred: Prediction, seconds: float) -> tuple[str, str]:
        """The image's boundary: ``("ok", "")``, ``("fail", one-line reason)`` or ``("stop", why --out is unusable)``.

        Runs in a writer thread or an encoding process; after one "stop" it tries nothing more."""
        if self._stop_msg:
            return "stop", self._stop_msg
        try:
            self.write(it, image, pred, seconds)
        except InputError as e:
            return "fail", str(e)
        except OSError as e:
            if e.errno in _OUT_UNUSABLE:  # no image after this one could be written either: stop, keep what is done
                self._stop_msg = (f"--out {self.out}: {e.strerror}; make room (or fix --out) and re-run the same "
                                  "command: finished images are kept and skipped")
                return "stop", self._stop_msg
            return "fail", f"cannot write output ({e.strerror or e}); check free space and permissions of --out"
        except Exception as e:  # nothing raised for one image (an encoder bug) stops the job
            return "fail", failure_message(it.path, e)
        return "ok", ""

    def _settle(self, it: Item, outcome: tuple[str, str], res: JobResult, done_count: list[int]) -> None:
        kind, msg = outcome
        if kind == "stop":
            res.stopped = res.stopped or msg
            return
        if kind == "fail":
            self._fail(res, str(it.path), msg)
            return
        with self._lock:
            res.done += 1
            done_count[0] += 1
            n = done_count[0]
        self.on_progress(n, res.total)

    # -- reports ---------------------------------------------------------------
    def load_records(self, items: Sequence[Item]) -> list[tuple[Item, dict]]:
        return load_records(self.layout, items)

    def write_reports(self, items: Sequence[Item], res: JobResult) -> None:
        """predictions.csv, predictions.json and failures.csv from all finished records."""
        write_reports(self.layout, items, res.failed, self.classes, coco=self.o.coco, gt=self.gt is not None,
                      model_name=self.p.checkpoint.metadata.get("name", ""))
