"""URLs as fcn-label reads and shows them: which are local, which store family and extra they need,
and how they appear in messages, records and reports (never with a credential)."""

from __future__ import annotations

import re

# scheme -> the extra that installs its fsspec implementation
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
          "adl": "azure", "http": "http", "https": "http"}
READ_ONLY = ("http", "https")
AZURE = ("az", "abfs", "abfss", "adl")  # Azure calls a bucket a container
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


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


def family(url: str) -> str:
    """The store family of ``url`` for messages: "s3", "gs", "az" (or its own scheme)."""
    sch = scheme(url) or "file"
    return "s3" if sch in ("s3", "s3a") else "gs" if sch in ("gs", "gcs") else "az" if sch in AZURE else sch


def bucket_word(url: str) -> str:
    return "container" if family(url) == "az" else "bucket"


def join(base: str, rel: str) -> str:
    """``base`` + "/" + ``rel`` for URLs (always forward slashes)."""
    return base.rstrip("/") + "/" + rel.lstrip("/") if rel else base


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
