"""A predict job over many files: it only orchestrates.

It checks --out and the shard, scans the record store to skip finished images (resume), picks a
runner (:mod:`.runners`, or :mod:`.ray_engine` for ``--engine ray``) and hands it the parts
(:class:`.pipeline.Parts`: decode, infer, the sink) and a tally, then assembles the reports from the
records (:mod:`fcn_label.predfolder.reports`), so a killed and resumed job ends with the same files as
one that ran through.

--out may be an object store URL: the sink then puts objects and the records are read through a local
mirror of the segments, in a temporary folder removed at the end (:mod:`fcn_label.predfolder.remote`
says how a store without rename, append or lock keeps the same guarantees).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from ..classes import voc_palette
from ..errors import ConfigError
from ..images import InputError, remove_stale_temp_in
from ..predfolder import version
from ..predfolder.layout import AUX_DIRS, OutputLayout, Palette
from ..predfolder.records import scan_records
from ..predfolder.remote import RemoteOut, new_mirror
from ..predfolder.reports import load_records, reports_lock, write_reports
from ..storage import StorageError, explain, is_url
from .discover import Item
from .options import JobResult, PredictOptions
from .parallel import check_procs, default_procs
from .pipeline import Parts
from .predictor import Predictor
from .runners import run_forked, run_here
from .sink import Sink
from .stages import Decode, Infer
from .tally import Tally


class PredictJob:
    """Predict every item, writing outputs under ``options.out`` and never elsewhere.

    ``on_progress(done, total)`` is called as images finish (skipped ones count as done),
    ``on_failure(path, message)`` for each input that fails."""

    def __init__(self, predictor: Predictor, options: PredictOptions,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_failure: Callable[[str, str], None] | None = None):
        self.p = predictor
        self.o = options
        self.remote = RemoteOut(str(options.out)) if is_url(options.out) else None
        # remote: the local mirror of the record store, where the reports are assembled before upload
        self.mirror = new_mirror() if self.remote is not None else None
        self.out = self.mirror if self.remote is not None else Path(options.out)
        self.on_progress = on_progress
        self.on_failure = on_failure
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
        self.sink = Sink(self.layout, options, self.classes, self.palette, self.palette or ck.palette,
                         self.gt, self.ignore_index, remote=self.remote)
        self.parts = Parts(Decode(options.max_pixels), Infer(predictor), self.sink, options)

    def procs_for(self, n_todo: int) -> int:
        """How many inference processes this run forks (1: none), checking an explicit ``procs``."""
        asked = self.o.procs
        procs = default_procs(self.p.device, self.p.backend) if asked is None else \
            check_procs(asked, self.p.device, self.p.backend)
        return max(1, min(procs, n_todo))

    def run(self, items: Sequence[Item], problems: Sequence[tuple[str, str]] = ()) -> JobResult:
        """Predict ``items`` (this shard's part) and write the reports; ``problems`` are inputs discover
        could not use, ``(path, reason)``, listed as failures."""
        if self.remote is None:
            return self._run(items, problems)
        self.mirror.mkdir(parents=True, exist_ok=True)
        try:
            return self._run(items, problems)
        finally:
            shutil.rmtree(self.mirror, ignore_errors=True)

    def _run(self, items: Sequence[Item], problems: Sequence[tuple[str, str]]) -> JobResult:
        t0 = time.perf_counter()
        self._open_out()
        rank, world = self.o.shard
        if not 0 <= rank < world:
            raise ConfigError(f"--shard {rank}/{world}: index must be in 0..{world - 1}")
        all_items = list(items)
        mine = [it for i, it in enumerate(all_items) if i % world == rank]
        res = JobResult(total=len(mine))
        try:
            todo = mine
            if self.remote is not None:
                self._sync()
            if not self.o.overwrite:
                idx = scan_records(self.layout, [it.rel for it in mine])
                todo = [it for i, it in enumerate(mine) if not idx.done(i)]
                res.skipped = len(mine) - len(todo)
                del idx
            on_failure = self.on_failure
            tally = Tally(res, self.on_progress, (lambda f: on_failure(f.path, f.reason)) if on_failure else None,
                          record=self.sink.record_failure)
            for path, reason in problems:
                tally.fail(path, "input", reason)
            if self.remote is None:
                self._remove_stale_temp(todo)  # an object store has no temporary names to clean up
            tally.start()
            if todo and self.o.ray is not None:
                from .ray_engine import run_ray  # Ray is an extra: imported only for --engine ray

                run_ray(self.parts, todo, tally, self.o.ray)
            elif todo:
                procs = self.procs_for(len(todo))
                if procs > 1:
                    run_forked(self.parts, todo, tally, procs)
                else:
                    run_here(self.parts, todo, tally)
        finally:
            self._close_sink()
        res.seconds = time.perf_counter() - t0
        if self.remote is not None:
            self._remote_reports(all_items, res)
            return res
        try:
            self.sink.checked(self.layout.reports_lock)  # never through a symlinked .fcn-label outside --out
            with reports_lock(self.layout):  # shards finishing together: the last one sees every record
                self.write_reports(all_items, res)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot write the reports ({e.strerror or e}); make room and re-run "
                             "the same command: finished images are kept and skipped") from None
        return res

    def _close_sink(self) -> None:
        """Close the sink: on an object store, its last buffered record lines are put then."""
        if self.remote is None:
            self.sink.close()
            return
        try:
            self.sink.close()
        except Exception as e:  # noqa: BLE001 - the store's own errors
            raise StorageError("--out " + explain(self.remote.url, e, "writing the records") + "; re-run the same "
                               "command: images with records are kept and skipped") from None

    def _sync(self) -> frozenset[str]:
        try:
            return self.remote.sync(self.layout)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - the store's own errors: --out cannot be read
            raise StorageError("--out " + explain(self.remote.url, e, "reading the records")) from None

    def _remote_reports(self, items: Sequence[Item], res: JobResult) -> None:
        """The reports of a remote --out, by the re-scan rule of :mod:`fcn_label.predfolder.remote`: made
        from the mirror, uploaded, and made again while a listing after the upload shows new segments."""
        seen = self._sync()
        again = "; re-run the same command: finished images are kept and skipped"
        while True:
            try:
                self.write_reports(items, res)
            except OSError as e:
                raise InputError(f"--out {self.remote.shown}: cannot assemble the reports in the temporary folder "
                                 f"{self.mirror} ({e.strerror or e}); make room there (or set TMPDIR)" + again) from None
            try:
                self.remote.publish(self.layout, self.o.coco)
            except Exception as e:  # noqa: BLE001 - the store's own errors
                raise StorageError("--out " + explain(self.remote.url, e, "writing the reports") + again) from None
            now = self._sync()
            if now == seen:
                return
            seen = now

    def _open_out(self) -> None:
        """Create --out, refuse a folder of a format this version cannot continue, and mark its format."""
        if self.remote is not None:
            self.remote.open_folder()
            return
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out}: is a file, not a folder; choose another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot create the folder ({e.strerror or e}); check the path") from None
        version.folder_version(self.layout)
        try:
            self.sink.checked(self.layout.format_file)
            version.claim(self.layout)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot write ({e.strerror or e}); check free space and "
                             "permissions") from None

    def _remove_stale_temp(self, todo: Sequence[Item]) -> int:
        """Delete what killed runs of this host were writing, in the folders this run writes to only
        (walking every output folder of a million-image --out would take minutes); a live run's files are kept."""
        folders = {self.out, self.layout.state, self.layout.records_dir, self.layout.failures_dir}
        for d in {it.rel.rpartition("/")[0] for it in todo}:
            base = self.out / d if d else self.out
            folders.add(base)
            folders.update(self.out / aux / d for aux in AUX_DIRS)
        return sum(remove_stale_temp_in(folder) for folder in folders)

    # -- reports ---------------------------------------------------------------
    def load_records(self, items: Sequence[Item]) -> list[tuple[Item, dict]]:
        return load_records(self.layout, items)

    def write_reports(self, items: Sequence[Item], res: JobResult) -> None:
        """predictions.csv, predictions.json and failures.csv from all finished records."""
        write_reports(self.layout, items, res.failed, self.classes, coco=self.o.coco, gt=self.gt is not None,
                      model_name=self.p.checkpoint.metadata.get("name", ""))
