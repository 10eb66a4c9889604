"""A predict job over many files: discovery, resume, background decoding, outputs, reports.

Each finished image leaves a small JSON record under ``OUT/.fcn-label/records``
written after its mask. A re-run skips images whose record exists, and the
reports (predictions.csv, predictions.json) are always assembled from the
records, so a killed and resumed job ends with the same files as one that ran
through.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io as _io
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch

from .io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, InputError, image_size, read_image, read_mask,
                 remove_stale_temp, why, write_text_atomic)
from .metrics import confusion_matrix, scores
from .outputs import coco_annotations, write_confidence, write_mask, write_overlay
from .predict import Prediction, Predictor

STATE_DIR = ".fcn-label"
FAILURE_DIR = "failures"  # under STATE_DIR: one JSON per failed input, so every shard's reports list them all
OVERLAY_DIR, CONFIDENCE_DIR = "overlays", "confidence"
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Item:
    path: Path
    rel: str  # output path relative to --out, without suffix, POSIX separators


@dataclass
class PredictOptions:
    out: Path
    batch_size: int | None = None  # None: the predictor's default for its device
    workers: int = 1
    palette: str = "model"  # model | voc | none
    coco: bool = True
    overlay: bool = False
    probs: bool = False
    gt: Path | None = None
    ignore_index: int | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    max_pixels: int = DEFAULT_MAX_PIXELS
    low_confidence: float = 0.5


@dataclass
class JobResult:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""  # why the job stopped before the end (disk full...); empty when it ran through

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------
# Discovery


def _safe_rel(path: Path, base: Path | None) -> str:
    """Output-relative name for ``path``: relative to ``base`` when inside it, never with '..'."""
    p = Path(os.path.normpath(os.path.abspath(path)))
    if base is not None:
        b = Path(os.path.normpath(os.path.abspath(base)))
        try:
            rel = p.relative_to(b)
            return rel.with_suffix("").as_posix()
        except ValueError:
            pass
    parts = [x for x in p.parts[1:] if x not in ("..", ".", "")]  # drop the anchor: never absolute
    return PurePosixPath(*parts).with_suffix("").as_posix() if parts else p.stem


def _walk(root: Path, skip: Path | None) -> list[Path]:
    found = []
    skip_abs = os.path.normpath(os.path.abspath(skip)) if skip else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if skip_abs and os.path.normpath(os.path.abspath(dirpath)) == skip_abs:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             (not skip_abs or os.path.normpath(os.path.abspath(os.path.join(dirpath, d))) != skip_abs))
        for f in sorted(filenames):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append(Path(dirpath) / f)
    return found


def discover(inputs: Sequence[str | os.PathLike], out: Path | None = None) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items to predict from folders, files, globs and list files, in a stable order.

    Returns the items and ``(path, reason)`` for every input that cannot be used;
    the output folder itself is never read back as input.
    """
    items: list[Item] = []
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        raw = str(raw)
        p = Path(raw)
        if any(ch in raw for ch in "*?[") and not p.exists():
            matches = sorted(glob.glob(raw, recursive=True))
            base = Path(raw.split("*")[0].split("?")[0].split("[")[0])
            base = base if raw.endswith(os.sep) or base.is_dir() else base.parent
            files = [Path(m) for m in matches if Path(m).is_file() and not _inside(Path(m), out)]
            if not files:
                problems.append((raw, "glob matched no files; check the pattern and quote it"))
            items += [Item(f, _safe_rel(f, base)) for f in files]
        elif p.is_dir() and _inside(p, out):
            problems.append((raw, f"is the output folder {out} or inside it, and outputs are never read back as "
                                  "inputs; choose an --out outside the input folder"))
        elif p.is_dir():
            files = _walk(p, out)
            if not files:
                problems.append((raw, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            items += [Item(f, _safe_rel(f, p)) for f in files]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                entry = entry.split()[0] if not Path(p.parent / entry).exists() and len(entry.split()) == 2 else entry
                f = Path(entry) if Path(entry).is_absolute() else p.parent / entry
                if not f.is_file():
                    problems.append((str(f), f"listed in {p}:{n} but not found; fix the list or the path"))
                    continue
                items.append(Item(f, _safe_rel(f, p.parent)))
        elif p.is_file():
            items.append(Item(p, p.stem))
        elif p.is_symlink():
            problems.append((raw, "broken symbolic link; fix or remove it"))
        else:
            problems.append((raw, "not found; check the path (folders, files, globs and .txt lists are accepted)"))
    return _dedupe(items, out), problems


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    a, b = os.path.abspath(path), os.path.abspath(folder)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


# Every output file of an item is ``<rel><suffix>`` with one of these suffixes, so a name must leave
# room for the longest within the 255-byte file-name limit of common filesystems.
OUTPUT_SUFFIXES = (".png", ".json", ".jpg")
MAX_NAME_BYTES = 255 - max(len(s) for s in OUTPUT_SUFFIXES)


def shown(s: str) -> str:
    """``s`` as valid UTF-8 text: bytes of a non-UTF-8 file name (held as surrogates) become ``\\xNN``.

    Reports and output names use this, so one such name cannot stop the CSV and JSON
    from being written.
    """
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fit(rel: str) -> str:
    """Shorten the last part of ``rel`` to fit the file-name limit, keeping its start and a hash of the whole."""
    head, _, name = rel.rpartition("/")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_NAME_BYTES:
        return rel
    tag = "~" + hashlib.sha1(raw).hexdigest()[:10]
    name = raw[: MAX_NAME_BYTES - 40].decode("utf-8", "ignore") + tag
    return f"{head}/{name}" if head else name


def _dedupe(items: list[Item], out: Path | None = None) -> list[Item]:
    """Drop repeats of the same file and give every item an output name nothing else can collide with.

    a.jpg and a.png become a_jpg and a_png; a name still taken (by another such name,
    by a folder of outputs: a file 'x.bmp' next to a folder 'x.png/', or by an input
    file: ``predict a.png --out .``) gets '~2', '~3'... An input folder named like one of
    predict's own (confidence/, overlays/, .fcn-label/) becomes 'confidence~2/'. Names
    compare case-insensitively, as on macOS and Windows volumes. The result depends only
    on the (sorted) inputs, so a re-run finds the same names.
    """
    seen, unique = set(), []
    for it in items:
        key = os.path.abspath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    rels = [_unreserve(shown(it.rel)) for it in unique]
    stems = Counter(r.lower() for r in rels)
    folders = {p.lower() for r in rels for p in _ancestors(r)}
    root = os.path.realpath(out) if out is not None else None
    inputs = {os.path.realpath(it.path) for it in unique} if root else set()

    def clashes(rel: str) -> bool:
        if rel.lower() in taken or any(f"{rel}{s}".lower() in folders for s in OUTPUT_SUFFIXES):
            return True
        return bool(inputs) and any(os.path.join(root, p) in inputs for p in _output_files(rel))

    taken: set[str] = set()
    result = []
    for it, base in zip(unique, rels):
        if stems[base.lower()] > 1:
            base = f"{base}{it.path.suffix.lower().replace('.', '_')}"
        base = _fit(base)
        rel, n = base, 1
        while clashes(rel):
            n += 1
            rel = _fit(f"{base}~{n}")
        taken.add(rel.lower())
        result.append(it if rel == it.rel else Item(it.path, rel))
    return result


def _output_files(rel: str) -> tuple[str, ...]:
    """Every file predict may write for ``rel``, relative to --out."""
    return (f"{rel}.png", f"{OVERLAY_DIR}/{rel}.jpg", f"{CONFIDENCE_DIR}/{rel}.png", f"{STATE_DIR}/records/{rel}.json")


def _unreserve(rel: str) -> str:
    head, sep, rest = rel.partition("/")
    return f"{head}~2/{rest}" if sep and head.lower() in (STATE_DIR, OVERLAY_DIR, CONFIDENCE_DIR) else rel


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def shard_from_env() -> tuple[int, int]:
    """torchrun's RANK / WORLD_SIZE, so N launched processes split one job."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# Write errors that say --out as a whole is unusable, not this one image.
_OUT_UNUSABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}

# ---------------------------------------------------------------------------
# Decoding in background workers


# Decoding workers hand over images up to this many pixels (48 MB as RGB); larger ones are only
# looked at (header) and decoded by the main process when their turn comes. Up to 2 x workers x
# batch-size decoded images wait between the workers and the model, so this bounds that queue
# (about 0.8 GB at the defaults) whatever the size of the photos.
WORKER_MAX_PIXELS = 16_000_000


class _Decode(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], max_pixels: int, worker_max_pixels: int = WORKER_MAX_PIXELS):
        self.items, self.max_pixels, self.worker_max_pixels = list(items), max_pixels, worker_max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int):
        """``(i, RGB array, None)`` or ``(i, None, one-line reason)``."""
        try:
            return i, read_image(self.items[i].path, self.max_pixels), None
        except Exception as e:  # a decoder bug must not kill the batch
            return i, None, self._reason(i, e)

    def _reason(self, i: int, e: Exception) -> str:
        return str(e) if isinstance(e, InputError) else \
            f"{self.items[i].path}: cannot decode ({why(e)}); re-export or remove it"

    def __getitem__(self, i: int):
        if torch.utils.data.get_worker_info() is not None:
            try:  # one boundary for the whole file: any exception here would kill the DataLoader
                w, h = image_size(self.items[i].path, self.max_pixels)
            except Exception as e:
                return i, None, self._reason(i, e)
            if w * h > self.worker_max_pixels:
                return i, None, None  # too big to queue: the main process decodes it
        return self.decode(i)


# glibc's allocator keeps the freed memory of mixed-size images and batches as holes in its
# heap, so the peak RSS crept up image after image (+400 MB over 200 images, benchmarks/memory.py);
# handing free pages back after every ~8 Mpx predicted keeps it flat.
TRIM_EVERY_PIXELS = 8_000_000
_malloc_trim = None


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim); a no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util

            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _check_record(rec) -> None:
    """Raise unless ``rec`` has every field the reports read, with the right types."""
    if not isinstance(rec, dict):
        raise ValueError("not an object")
    for k, t in (("path", str), ("file_name", str), ("width", int), ("height", int), ("seconds", (int, float)),
                 ("classes", dict), ("mean_confidence", (int, float)), ("low_confidence_fraction", (int, float))):
        if not isinstance(rec.get(k), t):
            raise ValueError(f"field {k}")
    if not all(isinstance(v, (int, float)) for v in rec["classes"].values()):
        raise ValueError("field classes")
    if not isinstance(rec.get("annotations", []), list) or not all(isinstance(a, dict) for a in rec.get("annotations", [])):
        raise ValueError("field annotations")
    g = rec.get("gt", {})
    if not isinstance(g, dict) or (g and "error" not in g and not (
            isinstance(g.get("pixel_accuracy"), (int, float)) and isinstance(g.get("mean_iou"), (int, float))
            and isinstance(g.get("iou"), list))):
        raise ValueError("field gt")


def _collate(batch):
    return batch[0]


# ---------------------------------------------------------------------------


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
        ck = predictor.checkpoint
        self.classes = list(ck.classes)
        self.palette = None if options.palette == "none" else (
            ck.palette if options.palette == "model" else None)
        if options.palette == "voc":
            from .weights import voc_palette
            self.palette = voc_palette()
        if options.palette not in ("model", "voc", "none"):
            raise ValueError(f"unknown palette {options.palette!r}; choose model, voc or none")
        self.ignore_index = ck.ignore_index if options.ignore_index is None else options.ignore_index
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------------
    def mask_path(self, it: Item) -> Path:
        return self.out / f"{it.rel}.png"

    def record_path(self, it: Item) -> Path:
        return self.out / STATE_DIR / "records" / f"{it.rel}.json"

    def _checked(self, path: Path) -> Path:
        """Create ``path``'s folder, refusing one that resolves outside --out (e.g. through a symlinked folder).

        The check runs before anything is created (resolve() follows the links of the
        part that exists), so not even an empty folder appears outside --out.
        """
        root = self.out.resolve()
        real = path.parent.resolve()
        if real != root and root not in real.parents:
            raise InputError(f"{path}: would be written outside --out {self.out} (through a symbolic link); remove the link")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def failure_path(self, path: str) -> Path:
        """Where a failed input's reason is kept, named by a hash of its path (inputs from any shard)."""
        return self.out / STATE_DIR / FAILURE_DIR / (hashlib.sha1(shown(str(path)).encode("utf-8")).hexdigest()[:20] + ".json")

    def is_done(self, it: Item) -> bool:
        return self.record_path(it).is_file() and self.mask_path(it).is_file()

    # -- per image -------------------------------------------------------------
    def _finish(self, it: Item, image: np.ndarray, pred: Prediction, seconds: float) -> None:
        mask_path = self._checked(self.mask_path(it))
        write_mask(mask_path, pred.labels, self.palette)
        if self.o.overlay:
            write_overlay(self._checked(self.out / OVERLAY_DIR / f"{it.rel}.jpg"), image, pred.labels,
                          self.palette or self.p.checkpoint.palette)
        if self.o.probs:
            write_confidence(self._checked(self.out / CONFIDENCE_DIR / f"{it.rel}.png"), pred.confidence)
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
        if self.o.coco:
            rec["annotations"] = coco_annotations(pred.labels, pred.confidence, n)
        if self.o.gt is not None:
            rec["gt"] = self._gt_metrics(it, pred.labels)
        self._checked(self.record_path(it))
        write_text_atomic(self.record_path(it), json.dumps(rec))
        self.failure_path(str(it.path)).unlink(missing_ok=True)  # it failed in an earlier run: no longer

    def _gt_metrics(self, it: Item, labels: np.ndarray) -> dict:
        gt_path = None
        for ext in (".png", ".bmp", ".tif", ".tiff"):
            cand = Path(self.o.gt) / f"{it.rel}{ext}"
            if cand.is_file():
                gt_path = cand
                break
        if gt_path is None:
            return {"error": f"no ground truth {Path(self.o.gt) / (it.rel + '.png')}"}
        try:
            gt = read_mask(gt_path)
        except InputError as e:
            return {"error": str(e)}
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
            raise ValueError(f"--shard {rank}/{world}: index must be in 0..{world - 1}")
        all_items = list(items)
        mine = [it for i, it in enumerate(all_items) if i % world == rank]
        res = JobResult(total=len(mine))
        remove_stale_temp(self.out)  # what a killed run was writing; a live concurrent run's files are kept
        for path, reason in problems:
            self._fail(res, path, reason)
        todo = []
        for it in mine:
            if not self.o.overwrite and self.is_done(it):
                res.skipped += 1
            else:
                todo.append(it)
        self.on_progress(res.skipped, res.total)
        if todo:
            self._predict(todo, res)
        res.seconds = time.perf_counter() - t0
        try:
            with self._reports_lock():  # shards finishing together: the last one sees every record
                self.write_reports(all_items, res)
        except OSError as e:
            raise InputError(f"--out {self.out}: cannot write the reports ({e.strerror or e}); make room and re-run "
                             "the same command: finished images are kept and skipped") from None
        return res

    def _fail(self, res: JobResult, path: str, reason: str) -> None:
        path, reason = shown(str(path)), shown(reason)
        msg = reason if reason.startswith(path) else f"{path}: {reason}"
        with self._lock:
            res.failed.append((str(path), msg))
        try:  # kept as a record too, so the other shards' failures.csv lists it
            write_text_atomic(self._checked(self.failure_path(path)), json.dumps({"path": path, "reason": msg}))
        except (OSError, InputError):
            pass  # still in this run's failures.csv
        self.on_failure(str(path), msg)

    @contextmanager
    def _reports_lock(self):
        """An exclusive lock on OUT/.fcn-label/reports.lock (POSIX; elsewhere no lock)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        path = self._checked(self.out / STATE_DIR / "reports.lock")
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _predict(self, todo: list[Item], res: JobResult) -> None:
        workers = max(0, self.o.workers)
        bs = max(1, self.o.batch_size or self.p.default_batch_size)
        dataset = _Decode(todo, self.o.max_pixels, WORKER_MAX_PIXELS)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, collate_fn=_collate, num_workers=workers,
            prefetch_factor=max(2, bs) if workers else None, shuffle=False,
        )
        writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcn-label-writer")
        inflight: list[Future] = []
        images: dict[int, np.ndarray] = {}
        window: dict[tuple, list[int]] = {}
        buffered = 0
        done_count = [res.skipped]
        since_trim = [0]

        def run_group(idxs: list[int]) -> None:
            if res.stopped:  # --out cannot take more: predicting would only waste time
                for i in idxs:
                    images.pop(i, None)
                return
            t = time.perf_counter()
            try:
                preds = list(self.p.predict_groups([(i, images[i]) for i in idxs], bs))
            except Exception as e:
                # out of memory on one size (or anything else): report the images, keep going
                for i in idxs:
                    self._fail(res, str(todo[i].path), f"inference failed ({why(e)}); try --tile 512 or a smaller --batch-size")
                    images.pop(i, None)
                return
            per = (time.perf_counter() - t) / max(1, len(idxs))
            since_trim[0] += sum(images[i].shape[0] * images[i].shape[1] for i in idxs)
            if since_trim[0] >= TRIM_EVERY_PIXELS:
                since_trim[0] = 0
                release_free_memory()
            for i, pred in preds:
                img = images.pop(i)
                inflight.append(writer.submit(self._write_one, todo[i], img, pred, per, res, done_count))
            while len(inflight) > 2 * bs:
                inflight.pop(0).result()

        def drain() -> None:
            """Wait for pending writes: before a large image, so two large images are never held at once."""
            while inflight:
                inflight.pop(0).result()

        try:
            for i, arr, err in loader:
                if res.stopped:
                    break
                if arr is None and err is None:  # a large image the worker left to us
                    drain()
                    i, arr, err = dataset.decode(i)
                if err is not None:
                    self._fail(res, str(todo[i].path), err)
                    continue
                if self.p.needs_tiling(arr.shape):
                    drain()
                    images[i] = arr
                    run_group([i])
                    continue
                images[i] = arr
                key = arr.shape
                window.setdefault(key, []).append(i)
                buffered += 1
                if len(window[key]) >= self.p.batch_limit(key, bs):
                    buffered -= len(window[key])
                    run_group(window.pop(key))
                elif buffered >= 4 * bs:
                    # many sizes in flight: run the fullest group to bound memory
                    key = max(window, key=lambda k: len(window[k]))
                    buffered -= len(window[key])
                    run_group(window.pop(key))
            for key in list(window):
                run_group(window.pop(key))
            for f in inflight:
                f.result()
        finally:
            writer.shutdown(wait=True)

    def _write_one(self, it: Item, image: np.ndarray, pred: Prediction, seconds: float, res: JobResult,
                   done_count: list[int]) -> None:
        try:
            self._finish(it, image, pred, seconds)
        except InputError as e:
            self._fail(res, str(it.path), str(e))
            return
        except OSError as e:
            if e.errno in _OUT_UNUSABLE:  # no image after this one could be written either: stop, keep what is done
                res.stopped = (f"--out {self.out}: {e.strerror}; make room (or fix --out) and re-run the same "
                               "command: finished images are kept and skipped")
                return
            self._fail(res, str(it.path), f"cannot write output ({e.strerror or e}); check free space and permissions of --out")
            return
        except Exception as e:  # one boundary per image: nothing raised for it stops the job
            self._fail(res, str(it.path), f"cannot write output ({why(e)})")
            return
        with self._lock:
            res.done += 1
            done_count[0] += 1
            n = done_count[0]
        self.on_progress(n, res.total)

    # -- reports ---------------------------------------------------------------
    def load_records(self, items: Sequence[Item]) -> list[tuple[Item, dict]]:
        recs = []
        for it in items:
            p = self.record_path(it)
            if p.is_file() and self.mask_path(it).is_file():
                try:
                    rec = json.loads(p.read_text(encoding="utf-8"))
                    _check_record(rec)
                    recs.append((it, rec))
                except Exception:  # a damaged record: removed, so the image is predicted again next time
                    p.unlink(missing_ok=True)
        return recs

    def _other_failures(self, items: Sequence[Item], res: JobResult, done: set[int]) -> list[tuple[str, str]]:
        """Failure records of items this run did not report (other shards, earlier runs) and that are not done."""
        mine = {p for p, _ in res.failed}
        rows = []
        for it in items:
            path = shown(str(it.path))
            if id(it) in done or path in mine:
                continue
            try:
                d = json.loads(self.failure_path(path).read_text(encoding="utf-8"))
                rows.append((str(d["path"]), str(d["reason"])))
            except FileNotFoundError:
                continue
            except Exception:  # a damaged record: the image is retried by its shard next time anyway
                continue
        return rows

    def write_reports(self, items: Sequence[Item], res: JobResult) -> None:
        """predictions.csv, predictions.json and failures.csv from all finished records."""
        recs = self.load_records(items)
        gt_cols = self.o.gt is not None or any("gt" in r for _, r in recs)
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = ["path", "mask", "width", "height", "seconds", "classes", "mean_confidence", "low_confidence_fraction"]
        if gt_cols:
            header += ["pixel_accuracy", "mean_iou"] + [f"iou_{c}" for c in self.classes] + ["gt_error"]
        w.writerow(header)
        for it, r in recs:
            row = [r["path"], r["file_name"], r["width"], r["height"], r["seconds"],
                   ";".join(f"{k}:{v:.4f}" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])),
                   r["mean_confidence"], r["low_confidence_fraction"]]
            if gt_cols:
                g = r.get("gt", {})
                if "error" in g or not g:
                    row += [""] * (2 + len(self.classes)) + [g.get("error", "no ground truth")]
                else:
                    row += [round(g["pixel_accuracy"], 6), round(g["mean_iou"], 6)]
                    row += ["" if v is None else round(v, 6) for v in g["iou"]] + [""]
            w.writerow(row)
        write_text_atomic(self.out / "predictions.csv", buf.getvalue())
        if self.o.coco:
            images, anns = [], []
            for image_id, (it, r) in enumerate(recs, 1):
                images.append({"id": image_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
                for a in r.get("annotations", []):
                    anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
            coco = {
                "info": {"description": "fcn-label predictions", "model": self.p.checkpoint.metadata.get("name", "")},
                "images": images,
                "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(self.classes)],
                "annotations": anns,
            }
            write_text_atomic(self.out / "predictions.json", json.dumps(coco))
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(res.failed)
        w.writerows(self._other_failures(items, res, {id(it) for it, _ in recs}))
        write_text_atomic(self.out / "failures.csv", buf.getvalue())
