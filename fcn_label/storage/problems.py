"""What went wrong with a store, in one line naming the URL and the fix (:func:`explain`), and the
error that carries it to the user (:class:`StorageError`, exit 2)."""

from __future__ import annotations

import os
import re

from ..errors import UserError
from .urls import bucket_word, family, scheme, shown_url

# per store: (where its credentials are set, where its endpoint is set) for the messages' fixes
HOW = {"s3": ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE", "AWS_ENDPOINT_URL for S3-compatible stores"),
       "gs": ("GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
              "STORAGE_EMULATOR_HOST for an emulator"),
       "az": ("AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
              "AZURE_STORAGE_SAS_TOKEN", "the BlobEndpoint of AZURE_STORAGE_CONNECTION_STRING")}


class StorageError(UserError):
    """A store that cannot be used as asked (no bucket, denied, no credentials, no answer): the message
    names the URL and the fix."""


def endpoint_of(url: str) -> str:
    """The endpoint the user set for ``url``'s store (empty for the store's own), fit to show: S3's
    ``AWS_ENDPOINT_URL``, a GCS emulator's ``STORAGE_EMULATOR_HOST``, the ``BlobEndpoint`` part of an Azure
    connection string (never the rest of it: it holds the account key)."""
    fam = family(url)
    if fam == "s3":
        return shown_url(os.environ.get("AWS_ENDPOINT_URL", ""))
    if fam == "gs":
        return shown_url(os.environ.get("STORAGE_EMULATOR_HOST", ""))
    if fam == "az":
        m = re.search(r"(?:^|;)\s*BlobEndpoint=([^;]+)", os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""), re.I)
        return shown_url(m.group(1).strip()) if m else ""
    return ""


def upload_failure(e: BaseException) -> BaseException:
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
    e = upload_failure(e)
    u = shown_url(url)
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    bucket = u.split("://", 1)[-1].split("/", 1)[0]
    fam = family(url)
    creds, endpoint_var = HOW.get(fam, ("", ""))
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low \
            or "containernotfound" in low or "specified container does not exist" in low:
        return f"{u}: no such {bucket_word(url)} '{bucket}'; create it or fix the URL"
    if "nocredentials" in low or "unable to locate credentials" in low or "credentials" in low and "not" in low \
            or "anonymous caller" in low or "connection_string or account_name" in low:
        return (f"{u}: no credentials for {scheme(url)}://; set them the store's standard way"
                + (f" ({creds})" if creds else ""))
    if "failed to authenticate" in low or "authenticationfailed" in low or "azuresigningerror" in low \
            or "invalid credentials" in low:
        return f"{u}: the store refused the credentials while {doing}; check them" + (f" ({creds})" if creds else "")
    if isinstance(e, PermissionError) or "accessdenied" in low or "access denied" in low or "forbidden" in low \
            or "403" in low:
        return (f"{u}: access denied while {doing}; check the credentials' permissions for this {bucket_word(url)} "
                "and prefix")
    if "connect" in low or "endpoint" in low or "timed out" in low or "timeout" in low or "name or service" in low:
        endpoint = endpoint_of(url)
        where = f" at {endpoint}" if endpoint else ""
        return (f"{u}: the store does not answer{where} ({type(e).__name__}); check the endpoint"
                + (f" ({endpoint_var})" if endpoint_var else "") + " and the network")
    if isinstance(e, FileNotFoundError):
        return f"{u}: not found while {doing}; check the URL"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if any(k in low for k in ("internalerror", "internal error", "slowdown", "serviceunavailable", "service unavailable")):
        return f"{u}: the store failed while {doing} ({type(e).__name__}: {first}); try again later"
    return f"{u}: cannot use the store while {doing} ({type(e).__name__}: {first}); check the URL and credentials"
