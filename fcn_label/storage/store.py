"""A store opened through fsspec (:func:`open_store`): whole-object reads and writes, streamed
listings, and the reads of single objects that per-file steps make (:func:`read_object`)."""

from __future__ import annotations

import os
from typing import Iterator

from ..errors import InputError
from .problems import StorageError, explain
from .urls import EXTRAS, READ_ONLY, bucket_word, family, join, scheme, shown_url

UPLOAD_PART, UPLOAD_PARTS_AT_ONCE = 8 << 20, 4  # multipart uploads: 32 MiB in flight per file
# Listing entries handed from fsspec's event loop to the walk at a time (an S3 page holds 1,000 keys).
WALK_CHUNK = 1000


class Store:
    """One fsspec file system and a root URL on it; paths below it are POSIX-relative strings.

    Picklable and fork-safe: fsspec's async file systems (s3fs) refuse to run in a process forked
    after they were made ("not fork-safe"), and predict forks decoding workers and inference
    processes, and a Ray runner pickles its sink. So the file system is re-made (by URL, from
    fsspec's per-process cache) the first time a new process uses it, and a pickle holds the URL only.
    """

    def __init__(self, url: str, fs: object, root: str):
        self.url = url  # as the user wrote it, without a trailing slash
        self.root = root  # the file system's own path of ``url`` (bucket/prefix for S3)
        self._fs, self._pid = fs, os.getpid()

    @property
    def fs(self):
        """This process's fsspec file system for the URL."""
        if self._pid != os.getpid():
            from fsspec.core import url_to_fs

            self._fs, self._pid = url_to_fs(self.url)[0], os.getpid()
        return self._fs

    def __reduce__(self):
        return (open_store, (self.url,))

    def __repr__(self) -> str:
        return f"Store({shown_url(self.url)!r})"

    @property
    def read_only(self) -> bool:
        return scheme(self.url) in READ_ONLY

    def refuse_if_read_only(self, what: str = "") -> None:
        """One line, before anything is written, when the URL's scheme cannot be written (http)."""
        if self.read_only:
            raise StorageError(f"{what + ' ' if what else ''}{shown_url(self.url)}: {scheme(self.url)}:// is "
                               "read-only; write to a folder or an object store")

    def url_of(self, rel: str) -> str:
        return join(self.url, rel)

    def path_of(self, rel: str) -> str:
        return join(self.root, rel) if rel else self.root

    def read_bytes(self, rel: str = "") -> bytes:
        return self.fs.cat_file(self.path_of(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One whole object (a single PUT on object stores): readers see all of it or none of it."""
        self.refuse_if_read_only()
        self.fs.pipe_file(self.path_of(rel), data)

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        """Upload a local file as one whole object (a multipart upload for a large one, which S3 makes
        visible only when complete): for the reports, which may be gigabytes."""
        self.refuse_if_read_only()
        self.fs.put_file(os.fspath(local), self.path_of(rel), **self._upload_limits())

    def _upload_limits(self) -> dict:
        """s3fs uploads a large file in parts of up to 50 MiB, ten at a time: half a gigabyte of a
        million-image predictions.json held at once. Smaller parts, fewer at a time, keep it to tens of MB."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        return {"chunksize": UPLOAD_PART, "max_concurrency": UPLOAD_PARTS_AT_ONCE} if "s3" in protocols else {}

    def get_file(self, rel: str, local: str | os.PathLike) -> None:
        """Download one object to a local file."""
        self.fs.get_file(self.path_of(rel), os.fspath(local))

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path_of(rel))

    def isdir(self, rel: str = "") -> bool:
        """Whether ``rel`` is a folder (on S3: a prefix holding at least one object). On S3 one request for
        one key: s3fs's isdir lists the whole folder first (a million keys for a flat prefix)."""
        if self._s3():
            from fsspec.asyn import sync

            bucket, _, key = self.path_of(rel).partition("/")
            key = key.strip("/")
            try:
                page = sync(self.fs.loop, self.fs._call_s3, "list_objects_v2", Bucket=bucket,
                            Prefix=key + "/" if key else "", Delimiter="/", MaxKeys=1, **self.fs.req_kw)
            except FileNotFoundError:
                return False
            return bool(page.get("Contents") or page.get("CommonPrefixes"))
        return self.fs.isdir(self.path_of(rel))

    def _s3(self) -> bool:
        """Whether the file system is s3fs's (whose paginated listing calls this module uses)."""
        fs = self.fs
        return type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_iterdir") and hasattr(fs, "_call_s3")

    def isfile(self, rel: str = "") -> bool:
        return self.fs.isfile(self.path_of(rel))

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path_of(rel))
        except FileNotFoundError:
            pass

    def list_names(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``; [] when there is nothing."""
        try:
            entries = self.fs.ls(self.path_of(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def walk_files(self, rel: str = "", skip: str | None = None) -> Iterator[str]:
        """Relative paths of every file under ``rel``, in the order a local folder walk gives (a folder's
        files sorted, then its sub-folders in sorted order; hidden sub-folders and ``skip``, a relative
        folder, left out), streamed.

        On S3 the listing comes page by page (1,000 keys a request) and only each folder's sub-folder
        names are held, so a prefix of a million keys is never held as a listing beside the caller's
        own list (fsspec's walk lists a whole folder, and keeps it in its listing cache). Elsewhere,
        fsspec's walk, one folder at a time, dropping each folder from the cache once walked.
        """
        base = rel.strip("/")
        skip = skip.strip("/") if skip else None
        if self._s3():
            yield from self._walk_s3(base, skip)
            return
        top = self.path_of(rel)
        for dirpath, dirnames, filenames in self.fs.walk(top, detail=False):
            sub = dirpath[len(top):].strip("/") if dirpath.startswith(top) else ""
            prefix = (base + "/" if base else "") + (sub + "/" if sub else "")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (prefix + d) != skip)
            for f in sorted(filenames):
                yield prefix + f
            self.fs.invalidate_cache(dirpath)

    def _walk_s3(self, base: str, skip: str | None) -> Iterator[str]:
        from fsspec.asyn import sync

        fs = self.fs
        bucket, _, key0 = self.root.partition("/")

        def folder(rel: str) -> Iterator[str]:
            prefix = "/".join(p for p in (key0, rel) if p)
            prefix = prefix + "/" if prefix else ""
            pages = fs._iterdir(bucket, prefix=prefix, delimiter="/")

            async def take() -> list[dict]:
                out = []
                async for entry in pages:
                    out.append(entry)
                    if len(out) >= WALK_CHUNK:
                        break
                return out

            subs = []
            while True:
                chunk = sync(fs.loop, take)
                if not chunk:
                    break
                for e in chunk:
                    name = e["name"][len(bucket) + 1 + len(prefix):].strip("/")
                    if not name or "/" in name:
                        continue
                    if e["type"] == "directory":
                        subs.append(name)
                    else:
                        yield (rel + "/" if rel else "") + name
            for d in sorted(subs):
                sub = (rel + "/" if rel else "") + d
                if not d.startswith(".") and sub != skip:
                    yield from folder(sub)

        yield from folder(base)

    def check_bucket(self, what: str) -> None:
        """For a URL with nothing at it: one line when the reason is that its bucket does not exist."""
        bucket = self.root.split("/", 1)[0]
        if bucket and not self.fs.exists(bucket):
            raise StorageError(f"{what} {shown_url(self.url)}: no such {bucket_word(self.url)} '{bucket}'; create it "
                               "or fix the URL")

    def sub(self, rel: str) -> "Store":
        return Store(join(self.url, rel), self.fs, self.path_of(rel))

    def walk_all(self, rel: str = "") -> Iterator[str]:
        """As :meth:`walk_files` but hidden folders included: copying a folder whole (a prediction
        folder's ``.fcn-label/`` record store is part of it)."""
        top = self.path_of(rel)
        for dirpath, dirnames, filenames in self.fs.walk(top, detail=False):
            dirnames[:] = sorted(dirnames)
            sub = dirpath[len(top):].strip("/") if dirpath.startswith(top) else ""
            prefix = (rel.strip("/") + "/" if rel.strip("/") else "") + (sub + "/" if sub else "")
            for f in sorted(filenames):
                yield prefix + f

    def get_files(self, pairs: "list[tuple[str, str]]", threads: int = 8) -> None:
        """Download ``(rel, local path)`` pairs, a few at a time (object stores answer each request
        slowly but many at once); each is streamed to disk, never held in memory whole. One file at
        a time per call of the file system's ``get_file``: its list form would read ``[`` or ``*`` in
        a key as a pattern."""
        def get(pair: "tuple[str, str]") -> None:
            os.makedirs(os.path.dirname(pair[1]) or ".", exist_ok=True)
            self.fs.get_file(self.path_of(pair[0]), pair[1])

        _each(get, pairs, threads)

    def get_batch(self, pairs: "list[tuple[str, str]]") -> None:
        """Download ``(rel, local path)`` pairs in one call of the file system's list form, which async stores
        (s3fs) run concurrently in batches: for thousands of small objects, faster than :meth:`get_files`'
        threads. The keys must hold no pattern characters (``*``, ``?``, ``[``): the list form expands them."""
        self.fs.get([self.path_of(rel) for rel, _ in pairs], [local for _, local in pairs])

    def put_files(self, pairs: "list[tuple[str, str]]", threads: int = 8) -> None:
        """Upload ``(local path, rel)`` pairs, a few at a time; each becomes one whole object (a large
        file goes up as a multipart upload, which the store publishes only when complete)."""
        self.refuse_if_read_only()
        limits = self._upload_limits()
        _each(lambda pair: self.fs.put_file(pair[0], self.path_of(pair[1]), **limits), pairs, threads)


def _each(fn, items: list, threads: int) -> None:
    """``fn`` on every item, on up to ``threads`` threads; the first error is raised once all are done."""
    if len(items) <= 1 or threads <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def read_object(url: str, head: int | None = None) -> bytes:
    """The bytes of one object (or its first ``head`` bytes: one range request), for a per-file step: any
    failure is an :class:`InputError` naming the (shown) URL, so the object becomes one failures.csv row
    and the batch goes on."""
    full = str(getattr(url, "full", url))
    try:
        store = open_store(full)
        if head is not None:
            return store.fs.cat_file(store.path_of(""), start=0, end=head)
        return store.read_bytes()
    except StorageError as e:
        raise InputError(str(e)) from None
    except IsADirectoryError:
        raise InputError(f"{shown_url(full)}: is a folder (a prefix), not an image") from None
    except FileNotFoundError:
        raise InputError(f"{shown_url(full)}: not found (deleted since it was listed, or named in a list but "
                         "missing); fix the list or the path") from None
    except Exception as e:  # the store's own error types: this object cannot be read now
        raise InputError(explain(full, e, "reading")) from None


def open_store(url: str) -> Store:
    """The :class:`Store` of ``url``; a missing fsspec implementation is one line naming the extra."""
    url = str(url).rstrip("/") if not str(url).endswith("://") else str(url)
    sch = scheme(url) or "file"
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise StorageError(f"{shown_url(url)}: reading {sch}:// needs fsspec; install it with "
                           f'pip install "fcn-label[{EXTRAS.get(sch, "s3")}]"') from None
    try:
        fsspec.get_filesystem_class(sch)
    except (ImportError, ValueError) as e:
        extra = EXTRAS.get(sch)
        if extra:
            raise StorageError(f"{shown_url(url)}: {sch}:// needs the '{extra}' extra; install it with "
                               f'pip install "fcn-label[{extra}]"') from None
        known = ", ".join(sorted(fsspec.available_protocols())[:12])
        raise StorageError(f"{shown_url(url)}: unknown storage scheme {sch}:// ({e}); use a local path or one of "
                           f"{known}, ...") from None
    quiet_tracebacks(url)
    try:
        fs, root = url_to_fs(url)
    except Exception as e:  # the implementation is installed: its constructor refused (adlfs: no account at all)
        raise StorageError(explain(url, e, "connecting")) from None
    return Store(url, fs, root.rstrip("/") if root != "/" else root)


def quiet_tracebacks(url: str) -> None:
    """gcsfs logs each request error it is about to raise with its traceback (``logger.exception``), and
    with no logging configured Python prints that to stderr: a user would see a traceback above the one
    line this module makes of the same error. Records carrying a traceback are dropped; its other
    warnings still show."""
    if family(url) == "gs":
        import logging

        log = logging.getLogger("gcsfs")
        if _drop_tracebacks not in log.filters:
            log.addFilter(_drop_tracebacks)


def _drop_tracebacks(record) -> bool:
    return not record.exc_info
