"""Remote inputs and outputs for the verbs that read and write local folders: copy in, run, copy out.

evaluate, review, select, export and finetune read folders and files with the ordinary file API
(Pillow, pandas, torch.load, ``os.walk``). Rather than teach each of them every store, a
:class:`Staging` gives each URL argument a local stand-in in one temporary folder under the system
temp dir (``TMPDIR``):

* an input URL is checked up front (one line, exit 2: no such bucket, access denied, no credentials,
  store not answering, nothing at that URL) and downloaded: a file, or a folder (prefix) whole,
  hidden folders included. On a web server (``http(s)://``, read-only) a URL ending in ``/`` is a
  folder, read through its index page's links; any other URL is a file. A list file (``.txt``) brings the files its lines name (relative to it)
  and a ``classes.txt`` beside it; a COCO ``.json`` brings the ``classes.txt`` beside it, and its
  ``images/`` folder when the verb asks. The local copy mirrors the URL (``TMP/s3/bucket/key``), so
  relative paths between inputs on one store keep working;
* an output URL is checked writable, and what is already there is downloaded first, so the verb
  sees the folder it would see locally: finetune resumes from it, export and review skip what they
  already wrote. :meth:`Staging.sync` uploads every file that is new or changed since it was
  downloaded or last uploaded, each as one whole object (a reader never sees half a file); the
  hidden ``*.tmp`` files of an unfinished atomic write are never uploaded, and no object is ever
  deleted.

Text outputs (CSV, JSON, HTML, list files) name the URLs, not the temporary folder: each staged
root in them is replaced by its URL on the way up (:meth:`Staging.shown`); binary files (a
checkpoint's metadata) keep the local names. The temporary folder is removed at the end, unless an
upload failed: then it is kept and named, so no output is lost. A run killed with ``kill -9`` leaves
it behind; the next staged run removes such folders of processes that are gone.

The cost is disk and time: a remote input is read whole before the verb starts (a prediction folder
given to evaluate --pred, review, select or export is downloaded whole). Everything here goes
through :class:`~fcn_label.storage.Store`; this module never talks to fsspec itself.
"""

from __future__ import annotations

import atexit
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .storage import Store, StorageError, check_readable, check_writable, explain, is_url, join, local_path, \
    open_store, scheme, shown_url

TEMP_PREFIX = "fcn-label-stage-"
# outputs whose temporary-folder paths are replaced by URLs on the way up
TEXT_SUFFIXES = (".csv", ".json", ".jsonl", ".html", ".htm", ".txt", ".xml", ".toml", ".md", ".yaml", ".yml")
_ATOMIC_TEMP = re.compile(r"^\..*\.tmp$")  # fcn_label.images.atomic_path's unfinished writes


@dataclass
class _Output:
    url: str
    store: Store
    local: Path
    is_file: bool
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel -> (size, mtime_ns) in sync with the store


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def remove_stale_folders(tmp: str | None = None) -> int:
    """Remove the staging folders that runs killed on this host left in the temp dir; return how many.

    A folder is named after its host and process id; one whose process is gone (and that belongs to
    this user) is removed, any other is left alone."""
    tmp = tmp or tempfile.gettempdir()
    host = socket.gethostname().replace("-", "_")
    removed = 0
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return 0
    for e in entries:
        m = re.match(re.escape(TEMP_PREFIX) + r"(.+)-(\d+)-[^-]+$", e.name)
        if not m or m.group(1) != host or not e.is_dir(follow_symlinks=False):
            continue
        try:
            if e.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(m.group(2)), 0)
            continue  # alive (or another's process of the same id): leave it
        except ProcessLookupError:
            pass
        except (PermissionError, OSError):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        removed += 1
    return removed


class Staging:
    """Local stand-ins for URL arguments; a context manager that uploads outputs and cleans up.

    Local paths pass through untouched (``input``/``output`` return ``Path(value)``), so a run
    without URLs does exactly what it did before and creates no temporary folder."""

    def __init__(self, log: Callable[[str], None] | None = None, started: Callable[[], None] | None = None):
        self.log = log or (lambda m: None)
        self.started = started  # called once, when the first URL makes the temporary folder
        self.root: Path | None = None
        self.outputs: list[_Output] = []
        self.local_outputs: list[Path] = []  # local --out paths: their text files name URLs too (close)
        self._since = 0  # when the temporary folder was made (ns): only files changed since can name it
        self.kept = False

    # -- the temporary folder and the names in it -----------------------------------------------
    def _root(self) -> Path:
        if self.root is None:
            remove_stale_folders()
            host = socket.gethostname().replace("-", "_")
            self.root = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{host}-{os.getpid()}-"))
            self._since = time.time_ns()
            if self.started:
                self.started()
        return self.root

    def local_of(self, url: str) -> Path:
        """Where ``url`` lives in the temporary folder: ``TMP/<scheme>/<the rest of the URL>``
        (without credentials or query string)."""
        sch = scheme(url)
        rest = shown_url(url).split("://", 1)[1].strip("/")
        parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
        return self._root().joinpath(sch, *parts)

    def shown(self, text: str) -> str:
        """``text`` with every temporary-folder path written as the URL it stands for."""
        if self.root is None or str(self.root) not in text:
            return text
        for sch in sorted(n for n in os.listdir(self.root) if not n.startswith(".")):
            text = text.replace(f"{self.root}/{sch}/", f"{sch}://")
        return text

    # -- inputs ----------------------------------------------------------------------------------
    def input(self, value, what: str, images_beside: bool = False) -> Path | None:
        """A local path for the input ``value`` (a path or a URL; None stays None).

        A URL is checked readable and downloaded; see the module docstring for what comes with a
        list file or a COCO JSON. ``what`` (the option, e.g. ``--gt``) starts any error line."""
        if value is None:
            return None
        s = str(value)
        if not is_url(s):
            return value if isinstance(value, Path) else Path(local_path(s))
        store = check_readable(s, what)
        local = self.local_of(s)
        try:
            if self._is_file(store, s):
                self._fetch(store, [("", local)])
                if local.suffix.lower() == ".txt":
                    self._fetch_listed(store, local, s)
                if local.suffix.lower() in (".txt", ".json"):
                    self._fetch_beside(s, ("classes.txt", "class_names.txt"))
                if images_beside and local.suffix.lower() == ".json":
                    self._fetch_folder(posixpath.dirname(s.rstrip("/")) + "/images", required=False)
            else:
                n = self._fetch_folder(s)
                self.log(f"downloaded {shown_url(s)}: {n} files")
        except StorageError:
            raise
        except Exception as e:  # the store's own errors, half-way through
            raise StorageError(f"{what} " + explain(s, e, "downloading")) from None
        return local

    @staticmethod
    def _is_file(store: Store, url: str) -> bool:
        """Whether ``url`` is one file rather than a folder. A web server has no folders, only pages:
        there a URL ending in "/" is a folder (its index page's links are the files), any other a file."""
        if store.read_only:
            return not url.split("?", 1)[0].endswith("/")
        return store.isfile()

    @staticmethod
    def _fetch(store: Store, pairs: list[tuple[str, Path]]) -> None:
        store.get_files([(rel, str(loc)) for rel, loc in pairs])

    def _fetch_folder(self, url: str, required: bool = True) -> int:
        store = open_store(url)
        if not required and not store.isdir():
            return 0
        local = self.local_of(url)
        batch: list[tuple[str, Path]] = []
        n = 0
        for rel in store.walk_all():  # streamed: a few hundred names in memory at a time
            batch.append((rel, local / rel))
            if len(batch) >= 256:
                self._fetch(store, batch)
                n, batch = n + len(batch), []
        self._fetch(store, batch)
        return n + len(batch)

    def _fetch_beside(self, url: str, names: tuple[str, ...]) -> None:
        parent = url.rstrip("/").rsplit("/", 1)[0]
        store = open_store(parent)
        for name in names:
            if store.isfile(name):
                self._fetch(store, [(name, self.local_of(join(parent, name)))])

    def _fetch_listed(self, store: Store, local: Path, url: str) -> None:
        """The files a list file names on its lines, relative to it ('image' or 'image mask' lines;
        absolute paths and URLs are left as they are). A name that is not there is skipped: the verb
        reports it as it would locally."""
        parent_url = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0]
        parent = open_store(parent_url)
        text = local.read_text(encoding="utf-8", errors="replace")
        rels: list[str] = []
        seen: set[str] = set()
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for tok in line.split():
                if tok.startswith("/") or is_url(tok) or "://" in tok:
                    continue
                rel = posixpath.normpath(tok)
                if rel.startswith("..") or rel in seen:
                    continue  # above the list's folder: not mirrored
                seen.add(rel)
                rels.append(rel)
        pairs = []
        for rel in rels:
            if parent.isfile(rel):
                pairs.append((rel, self.local_of(join(parent_url, rel))))
        self._fetch(parent, pairs)

    # -- outputs ---------------------------------------------------------------------------------
    def output(self, value, what: str, is_file: bool = False) -> Path | None:
        """A local path for the output ``value`` (a folder, or a file with ``is_file``).

        A URL is checked writable (a probe object is put and removed) and what is already there is
        downloaded; :meth:`sync` uploads the changes."""
        if value is None:
            return None
        s = str(value)
        if not is_url(s):
            local = value if isinstance(value, Path) else Path(local_path(s))
            self.local_outputs.append(local)
            return local
        if is_file:  # the probe goes beside the file, not under its name
            store = open_store(s)
            if store.read_only:
                raise StorageError(f"{what} {shown_url(s)}: {scheme(s)}:// is read-only; write to a folder or an "
                                   "object store")
            check_writable(s.rstrip("/").rsplit("/", 1)[0], what)
        else:
            store = check_writable(s, what)
        local = self.local_of(s)
        out = _Output(s, store, local, is_file)
        try:
            if store.isfile():
                store.get_files([("", str(local))])
            elif not is_file and store.isdir():
                n = self._fetch_folder(s)
                if n:
                    self.log(f"downloaded {shown_url(s)}: {n} files already there")
        except Exception as e:
            raise StorageError(f"{what} " + explain(s, e, "downloading what is already there")) from None
        if local.is_file():
            out.seen[""] = _stat(local)
        elif local.is_dir():
            out.seen = {p.relative_to(local).as_posix(): _stat(p) for p in local.rglob("*") if p.is_file()}
        if not is_file and not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
        self.outputs.append(out)
        return local

    def sync(self) -> int:
        """Upload every output file that is new or changed since the last sync; return how many.

        Each file is one whole object; unfinished atomic-write temporaries are left out; text files
        name URLs instead of the temporary folder."""
        total = 0
        for out in self.outputs:
            plain, texts, zips = [], [], []
            for rel, p in _files_of(out.local):
                try:
                    st = _stat(p)
                except FileNotFoundError:  # replaced while we looked; the next sync has it
                    continue
                if out.seen.get(rel) == st:
                    continue
                suffix = p.suffix.lower()
                (texts if suffix in TEXT_SUFFIXES else zips if suffix == ".zip" else plain).append((rel, p, st))
            try:
                for rel, p, st in zips:  # an archive's text members (an export's manifest) too
                    plain.append((rel, self._mapped_zip(p) or p, st))
                out.store.put_files([(str(p), rel) for rel, p, _ in plain])
                for rel, p, _ in texts:
                    data = p.read_bytes()
                    mapped = self._text_with_urls(data)
                    out.store.write_bytes(rel, data if mapped is None else mapped)
            except StorageError:
                raise
            except Exception as e:
                raise StorageError(explain(out.url, e, "uploading the outputs")) from None
            for rel, _, st in plain + texts:
                out.seen[rel] = st
            total += len(plain) + len(texts)
        return total

    def _mapped_zip(self, path: Path) -> Path | None:
        """A copy of the archive ``path`` whose text members name URLs (None: none names the temporary
        folder). Members are copied one at a time, with their names, times and compression."""
        import zipfile

        root = str(self.root).encode()
        with zipfile.ZipFile(path) as z:
            texts = [i for i in z.infolist() if i.filename.lower().endswith(TEXT_SUFFIXES)]
            if not any(root in z.read(i) for i in texts):
                return None
            (self._root() / ".zips").mkdir(exist_ok=True)
            fd, name = tempfile.mkstemp(suffix=".zip", dir=self._root() / ".zips")
            os.close(fd)
            mapped = Path(name)
            with zipfile.ZipFile(mapped, "w") as dst:
                for info in z.infolist():
                    data = z.read(info)
                    text = self._text_with_urls(data) if info in texts else None
                    dst.writestr(info, data if text is None else text, compress_type=info.compress_type)
        return mapped

    def _name_urls_locally(self) -> None:
        """A local output made from staged inputs names them by their URLs, as an uploaded one does (an
        export's manifest, evaluate's CSVs would otherwise name a temporary folder that is gone at exit):
        its text files, and archives' text members, that name the temporary folder are rewritten, each
        atomically. Only files changed since the folder was made are read (less a margin for file
        systems whose times are coarse)."""
        from .images import atomic_path, write_bytes_atomic

        since = self._since - 2_000_000_000
        for local in self.local_outputs:
            for _, p in _files_of(local):
                suffix = p.suffix.lower()
                if suffix not in TEXT_SUFFIXES + (".zip",) or p.stat().st_mtime_ns < since:
                    continue
                if suffix == ".zip":
                    mapped = self._mapped_zip(p)
                    if mapped is not None:
                        with atomic_path(p) as tmp:
                            shutil.copyfile(mapped, tmp)
                    continue
                text = self._text_with_urls(p.read_bytes())
                if text is not None:
                    write_bytes_atomic(p, text)

    def _text_with_urls(self, data: bytes) -> bytes | None:
        """A text file's bytes with the temporary folder's paths replaced by their URLs; None when it names none."""
        if self.root is None or str(self.root).encode() not in data:
            return None
        return self.shown(data.decode("utf-8", errors="surrogateescape")).encode("utf-8", errors="surrogateescape")

    def close(self, upload: bool = True) -> None:
        """Upload (unless told not to) and remove the temporary folder; after a failed upload the
        folder is kept and the error says where it is."""
        try:
            if self.root is not None and self.local_outputs:
                self._name_urls_locally()
            if upload and self.outputs:
                self.sync()
        except StorageError as e:
            self.kept = True
            raise StorageError(f"{self.shown(str(e))}; the outputs are kept in {self.root}: re-run the command to "
                               "upload them, or copy them yourself") from None
        finally:
            if self.root is not None and not self.kept:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # outputs are uploaded whatever happened: every file on disk is whole (the writers are
        # atomic), and a failed or interrupted run's finished part (finetune's last.pt) is worth keeping
        self.close(upload=not isinstance(exc, StorageError))


def _files_of(local: Path) -> list[tuple[str, Path]]:
    """An output's files as ``(path relative to it, path)``: the file itself, or a folder's files (unfinished
    atomic-write temporaries left out); none while it does not exist."""
    if local.is_file():
        return [("", local)]
    if local.is_dir():
        return sorted((p.relative_to(local).as_posix(), p) for p in local.rglob("*")
                      if p.is_file() and not _ATOMIC_TEMP.match(p.name))
    return []


_process: Staging | None = None


def fetch_for_process(url: str, what: str) -> Path:
    """A local copy of the input ``url`` that lives as long as this process (removed at exit): for a
    file that code deep below the command line opens by path, such as a --weights checkpoint."""
    global _process
    if _process is None:
        _process = Staging()
        atexit.register(_process.close, upload=False)
    return _process.input(url, what)
