"""Which version of an object a request reads: a context variable, set once per request.

A GET or HEAD with ``versionId`` reads that version everywhere below it: its HEAD, its trailer
read, its data reads, the re-checks of a refusal. Passing the version through every read of the
encrypted path (views, decryptors, refusals) would touch each of them; the variable reaches them
all, and only the upstream reads it. It names the object it is the version of (bucket and key):
a copy of a given source version (``x-amz-copy-source: ...?versionId=``) reads its source as
that version and its destination as it is now, in one context. It is set in the request's own
task (aiohttp runs each request in one), so it never leaks into another request; ``reading``
resets it when the reply is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

#: (bucket, key, version) read by the current request, or None: current objects only.
_VERSION: ContextVar[tuple[str, str, str] | None] = ContextVar("upstream_read_version", default=None)


def current(bucket: str, key: str) -> str | None:
    """The version of ``bucket``/``key`` the current request reads (None: the current object)."""
    read = _VERSION.get()
    if read is None or read[0] != bucket or read[1] != key:
        return None
    return read[2]


def reading(version: str | None, bucket: str, key: str) -> Token[tuple[str, str, str] | None]:
    """Read ``version`` of ``bucket``/``key`` from here on in this context (``done`` undoes it)."""
    return _VERSION.set((bucket, key, version) if version else None)


def done(token: Token[tuple[str, str, str] | None]) -> None:
    """Undo ``reading``; a reset from another context (a body closed elsewhere) is harmless."""
    try:
        _VERSION.reset(token)
    except ValueError:
        _VERSION.set(None)


@contextmanager
def read_as(version: str | None, bucket: str, key: str) -> Iterator[None]:
    """``reading`` for the ``with`` block only (a copy's reads of its source)."""
    token = reading(version, bucket, key)
    try:
        yield
    finally:
        done(token)


def versioned(params: dict[str, Any]) -> dict[str, Any]:
    """botocore's parameters (``Bucket``, ``Key``...) with the version read of that object, if any."""
    version = current(str(params.get("Bucket", "")), str(params.get("Key", "")))
    if version is not None:
        params["VersionId"] = version
    return params
