"""Object stores and other fsspec file systems: the one place fcn-label talks to them.

Every path argument may be a URL that fsspec knows (``s3://``, ``gs://``, ``az://``, ``http(s)://``,
``memory://``); a plain path, or ``file://``, stays a local :class:`~pathlib.Path` and goes through the
code that was there before, byte for byte. Credentials come from each store's own chain (for S3:
``AWS_*`` variables, profiles, ``AWS_ENDPOINT_URL`` for MinIO / Ceph / a test server); this module
never puts a credential in a message, and :func:`shown_url` strips any that a user wrote into a URL.

Object stores have no rename and no append, so writers here put whole objects: an output is one
``PUT`` (a reader never sees half of it), and the record store writes immutable segment objects
(:mod:`fcn_label.predfolder.records`).
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from .errors import InputError, UserError

# scheme -> the extra that installs its fsspec implementation
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
          "adl": "azure", "http": "http", "https": "http"}
READ_ONLY = ("http", "https")
AZURE = ("az", "abfs", "abfss", "adl")  # Azure calls a bucket a container
# per store: (where its credentials are set, where its endpoint is set) for the messages' fixes
_HOW = {"s3": ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE", "AWS_ENDPOINT_URL for S3-compatible stores"),
        "gs": ("GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
               "STORAGE_EMULATOR_HOST for an emulator"),
        "az": ("AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
               "AZURE_STORAGE_SAS_TOKEN", "the BlobEndpoint of AZURE_STORAGE_CONNECTION_STRING")}
UPLOAD_PART, UPLOAD_PARTS_AT_ONCE = 8 << 20, 4  # multipart uploads: 32 MiB in flight per file
# Listing entries handed from fsspec's event loop to the walk at a time (an S3 page holds 1,000 keys).
WALK_CHUNK = 1000
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(UserError):
    """A store that cannot be used as asked (no bucket, denied, no credentials, no answer): the message
    names the URL and the fix."""


def scheme(s: object) -> str | None:
    """The URL scheme of ``s`` (``"s3"``), or None for a local path (``file://`` counts as local)."""
    m = _URL.match(str(s))
    if not m:
        return None
    sch = m.group(1).lower()
    return None if sch in ("file", "local") else sch


def is_url(s: object) -> bool:
    """Whether ``s`` names a non-local fsspec location (a local path or ``file://`` does not)."""
    return scheme(s) is not None


def local_path(s: str) -> str:
    """``file:///x`` -> ``/x``; anything else unchanged."""
    return s[len("file://"):] if s.lower().startswith("file://") else s


def shown_url(url: str) -> str:
    """``url`` fit for a message, a record or a report: ``user:secret@`` and query strings dropped
    (a presigned URL's signature is a credential). Azure's ``abfs://container@account.dfs.core.windows.net/``
    keeps its ``container@``: a container's name, not a user's."""
    if scheme(url) not in AZURE:
        url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", str(url))
    return str(url).split("?", 1)[0]


def _family(url: str) -> str:
    """The store family of ``url`` for messages: "s3", "gs", "az" (or its own scheme)."""
    sch = scheme(url) or "file"
    return "s3" if sch in ("s3", "s3a") else "gs" if sch in ("gs", "gcs") else "az" if sch in AZURE else sch


def _bucket_word(url: str) -> str:
    return "container" if _family(url) == "az" else "bucket"


def _endpoint(url: str) -> str:
    """The endpoint the user set for ``url``'s store (empty for the store's own), fit to show: S3's
    ``AWS_ENDPOINT_URL``, a GCS emulator's ``STORAGE_EMULATOR_HOST``, the ``BlobEndpoint`` part of an Azure
    connection string (never the rest of it: it holds the account key)."""
    fam = _family(url)
    if fam == "s3":
        return shown_url(os.environ.get("AWS_ENDPOINT_URL", ""))
    if fam == "gs":
        return shown_url(os.environ.get("STORAGE_EMULATOR_HOST", ""))
    if fam == "az":
        m = re.search(r"(?:^|;)\s*BlobEndpoint=([^;]+)", os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""), re.I)
        return shown_url(m.group(1).strip()) if m else ""
    return ""


def _quiet_tracebacks(url: str) -> None:
    """gcsfs logs each request error it is about to raise with its traceback (``logger.exception``), and
    with no logging configured Python prints that to stderr: a user would see a traceback above the one
    line this module makes of the same error. Records carrying a traceback are dropped; its other
    warnings still show."""
    if _family(url) == "gs":
        import logging

        log = logging.getLogger("gcsfs")
        if _drop_tracebacks not in log.filters:
            log.addFilter(_drop_tracebacks)


def _drop_tracebacks(record) -> bool:
    return not record.exc_info


def join(base: str, rel: str) -> str:
    """``base`` + "/" + ``rel`` for URLs (always forward slashes)."""
    return base.rstrip("/") + "/" + rel.lstrip("/") if rel else base


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

    def url_of(self, rel: str) -> str:
        return join(self.url, rel)

    def path_of(self, rel: str) -> str:
        return join(self.root, rel) if rel else self.root

    def read_bytes(self, rel: str = "") -> bytes:
        return self.fs.cat_file(self.path_of(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One whole object (a single PUT on object stores): readers see all of it or none of it."""
        if self.read_only:
            raise StorageError(f"{shown_url(self.url)}: {scheme(self.url)}:// is read-only; write to a folder or "
                               "an object store")
        self.fs.pipe_file(self.path_of(rel), data)

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        """Upload a local file as one whole object (a multipart upload for a large one, which S3 makes
        visible only when complete): for the reports, which may be gigabytes."""
        if self.read_only:
            raise StorageError(f"{shown_url(self.url)}: {scheme(self.url)}:// is read-only; write to a folder or "
                               "an object store")
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
            raise StorageError(f"{what} {shown_url(self.url)}: no such {_bucket_word(self.url)} '{bucket}'; create it "
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

    def put_files(self, pairs: "list[tuple[str, str]]", threads: int = 8) -> None:
        """Upload ``(local path, rel)`` pairs, a few at a time; each becomes one whole object (a large
        file goes up as a multipart upload, which the store publishes only when complete)."""
        if self.read_only:
            raise StorageError(f"{shown_url(self.url)}: {scheme(self.url)}:// is read-only; write to a folder or "
                               "an object store")
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


class ObjectUrl(str):
    """A remote input's URL as every message, record and report shows it (:func:`shown_url`: no
    credentials), with the URL as given in ``full`` for fetching it; so nothing that prints or
    records an input's path can leak a password or a presigned signature."""

    def __new__(cls, url: str) -> "ObjectUrl":
        full = str(getattr(url, "full", url))
        self = super().__new__(cls, shown_url(full))
        if full != self:  # only then a second string (a million inputs: one string each, mostly)
            self._full = full
        return self

    @property
    def full(self) -> str:
        return self.__dict__.get("_full") or str(self)

    def __reduce__(self):
        return (ObjectUrl, (self.full,))


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
    _quiet_tracebacks(url)
    try:
        fs, root = url_to_fs(url)
    except Exception as e:  # the implementation is installed: its constructor refused (adlfs: no account at all)
        raise StorageError(explain(url, e, "connecting")) from None
    return Store(url, fs, root.rstrip("/") if root != "/" else root)


def _upload_failure(e: BaseException) -> BaseException:
    """The error that failed a multipart upload, rather than the one its clean-up raised after it: when the
    abort fails too (the store has already dropped the upload), s3fs raises the abort's error, in whose
    context the upload's own error is."""
    link: BaseException | None = e
    for _ in range(8):
        if link is None:
            break
        if "AbortMultipartUpload" in str(link) and isinstance(link.__context__, BaseException):
            return link.__context__
        link = link.__cause__ or link.__context__
    return e


def explain(url: str, e: BaseException, doing: str) -> str:
    """One line for a store error: what went wrong at ``url`` and the fix (never a credential)."""
    e = _upload_failure(e)
    u = shown_url(url)
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    bucket = u.split("://", 1)[-1].split("/", 1)[0]
    fam = _family(url)
    creds, endpoint_var = _HOW.get(fam, ("", ""))
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low \
            or "containernotfound" in low or "specified container does not exist" in low:
        return f"{u}: no such {_bucket_word(url)} '{bucket}'; create it or fix the URL"
    if "nocredentials" in low or "unable to locate credentials" in low or "credentials" in low and "not" in low \
            or "anonymous caller" in low or "connection_string or account_name" in low:
        return (f"{u}: no credentials for {scheme(url)}://; set them the store's standard way"
                + (f" ({creds})" if creds else ""))
    if "failed to authenticate" in low or "authenticationfailed" in low or "azuresigningerror" in low \
            or "invalid credentials" in low:
        return f"{u}: the store refused the credentials while {doing}; check them" + (f" ({creds})" if creds else "")
    if isinstance(e, PermissionError) or "accessdenied" in low or "access denied" in low or "forbidden" in low \
            or "403" in low:
        return (f"{u}: access denied while {doing}; check the credentials' permissions for this {_bucket_word(url)} "
                "and prefix")
    if "connect" in low or "endpoint" in low or "timed out" in low or "timeout" in low or "name or service" in low:
        endpoint = _endpoint(url)
        where = f" at {endpoint}" if endpoint else ""
        return (f"{u}: the store does not answer{where} ({type(e).__name__}); check the endpoint"
                + (f" ({endpoint_var})" if endpoint_var else "") + " and the network")
    if isinstance(e, FileNotFoundError):
        return f"{u}: not found while {doing}; check the URL"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if any(k in low for k in ("internalerror", "internal error", "slowdown", "serviceunavailable", "service unavailable")):
        return f"{u}: the store failed while {doing} ({type(e).__name__}: {first}); try again later"
    return f"{u}: cannot use the store while {doing} ({type(e).__name__}: {first}); check the URL and credentials"


def check_readable(url: str, what: str) -> Store:
    """Open ``url`` and make sure it can be read now (exit 2 before any work starts otherwise)."""
    store = open_store(url)
    try:
        if not store.exists():
            store.check_bucket(what)
            raise StorageError(f"{what} {shown_url(url)}: not found; check the URL "
                               "(for a folder, the prefix must hold at least one object)")
    except StorageError:
        raise
    except Exception as e:  # the store's own error types: anything here means it cannot be read
        raise StorageError(f"{what} " + explain(url, e, "reading")) from None
    return store


def check_writable(url: str, what: str) -> Store:
    """Open ``url`` and prove it can be written: the bucket exists and a small probe object can be put
    and removed (exit 2 before any work starts otherwise)."""
    store = open_store(url)
    if store.read_only:
        raise StorageError(f"{what} {shown_url(url)}: {scheme(url)}:// is read-only; write to a folder or an "
                           "object store")
    probe = f".fcn-label/probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        store.write_bytes(probe, b"")
    except StorageError:
        raise
    except FileNotFoundError as e:  # gcsfs: a put into a bucket that does not exist (its 404 names no reason)
        try:
            store.check_bucket(what)
        except StorageError:
            raise
        except Exception:  # noqa: BLE001 - the check's own failure says less than the put's
            pass
        raise StorageError(f"{what} " + explain(url, e, "writing")) from None
    except Exception as e:
        raise StorageError(f"{what} " + explain(url, e, "writing")) from None
    try:
        store.remove(probe)
    except Exception:  # noqa: BLE001 - writing is what was to be proven; a store may allow puts but not deletes
        pass
    return store
