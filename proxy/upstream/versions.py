"""Which version of an object a request reads: a context variable, set once per request.

A GET or HEAD with ``versionId`` reads that version everywhere below it: its HEAD, its trailer
read, its data reads, the re-checks of a refusal. Passing the version through every read of the
encrypted path (views, decryptors, refusals) would touch each of them; the variable reaches them
all, and only the upstream reads it. It is set in the request's own task (aiohttp runs each
request in one), so it never leaks into another request; ``reading`` resets it when the reply
is done.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

_VERSION: ContextVar[str | None] = ContextVar("upstream_read_version", default=None)


def current() -> str | None:
    """The version the current request reads (None: the current object)."""
    return _VERSION.get()


def reading(version: str | None) -> Token[str | None]:
    """Read ``version`` from here on in this context (``done`` undoes it)."""
    return _VERSION.set(version or None)


def done(token: Token[str | None]) -> None:
    """Undo ``reading``; a reset from another context (a body closed elsewhere) is harmless."""
    try:
        _VERSION.reset(token)
    except ValueError:
        _VERSION.set(None)


def versioned(params: dict[str, Any]) -> dict[str, Any]:
    """botocore's parameters with the version read, if any."""
    version = _VERSION.get()
    if version is not None:
        params["VersionId"] = version
    return params
