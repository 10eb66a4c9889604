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

from .checks import check_readable, check_writable
from .problems import StorageError, explain
from .store import Store, open_store, read_object
from .urls import EXTRAS, READ_ONLY, ObjectUrl, is_url, join, local_path, scheme, shown_url

__all__ = ["EXTRAS", "READ_ONLY", "ObjectUrl", "Store", "StorageError", "check_readable", "check_writable", "explain",
           "is_url", "join", "local_path", "open_store", "read_object", "scheme", "shown_url"]
