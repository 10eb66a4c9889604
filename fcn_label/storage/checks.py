"""Up-front checks that a store URL can be read or written, so a job refuses in one line before any work."""

from __future__ import annotations

import os

from .problems import StorageError, explain
from .store import Store, open_store
from .urls import shown_url


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
    store.refuse_if_read_only(what)
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
