"""Medusa's manifests, both ways. Pure.

Medusa writes, for every backed-up file, ``{"path", "MD5", "size"}`` with the plaintext values it
saw through the proxy. In the bucket the proxy stores ``size``/``MD5`` of the *stored* (encrypted)
object and keeps Medusa's values as ``source_size``/``source_MD5`` (the seed document's fields),
so the bucket's manifests describe the bucket's own objects and can be checked without the key.
On the way back the proxy restores exactly the bytes Medusa wrote.

A rewrite happens only when restoring it gives back the original bytes; anything else (not JSON,
not a manifest, an unusual serialisation) is stored unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.format.seed import source_md5_hex

_MANIFEST_KEY = re.compile(r"(^|/)meta/manifest\.json$|(^|/)index/backup_index/[^/]+/manifest_[^/]+\.json$")

SOURCE_SIZE = "source_size"
SOURCE_MD5 = "source_MD5"


def is_manifest_key(key: str) -> bool:
    """``.../meta/manifest.json`` and ``index/backup_index/<backup>/manifest_<fqdn>.json``."""
    return _MANIFEST_KEY.search(key) is not None


@dataclass(frozen=True)
class Stored:
    """What the bucket holds for one object: its stored size and upstream ETag (unquoted)."""

    size: int
    etag: str


def _parse(body: bytes) -> list[dict[str, Any]] | None:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, list):
        return None
    for section in document:
        if not isinstance(section, dict) or not isinstance(section.get("objects"), list):
            return None
        if not all(isinstance(obj, dict) and isinstance(obj.get("path"), str) for obj in section["objects"]):
            return None
    return document


def _entries(document: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for section in document:
        yield from section["objects"]


def _dump(document: list[dict[str, Any]]) -> bytes:
    return json.dumps(document).encode()


def object_paths(body: bytes) -> list[str] | None:
    """The object keys a manifest names, or None when the body is not a manifest."""
    document = _parse(body)
    if document is None:
        return None
    return [entry["path"] for entry in _entries(document)]


def rewrite(body: bytes, stored: Mapping[str, Stored]) -> bytes | None:
    """The manifest as the bucket keeps it, or None to store ``body`` unchanged.

    Entries whose object is in ``stored`` (the encrypted ones) get the stored size and ETag, and
    Medusa's values move to ``source_size``/``source_MD5``. Entries already carrying source fields
    are left alone, so rewriting is idempotent.
    """
    document = _parse(body)
    if document is None or _dump(document) != body:
        return None
    changed = False
    for section in document:
        objects = []
        for entry in section["objects"]:
            found = stored.get(entry["path"])
            if found is not None and SOURCE_SIZE not in entry and "size" in entry and "MD5" in entry:
                entry = {**entry, "MD5": found.etag, "size": found.size,
                         SOURCE_SIZE: entry["size"], SOURCE_MD5: entry["MD5"]}
                changed = True
            objects.append(entry)
        section["objects"] = objects
    if not changed:
        return None
    rewritten = _dump(document)
    return rewritten if restore(rewritten) == body else None


def _medusa_md5(value: Any) -> Any:
    """``source_MD5`` as Medusa compares it: the seed's base64 MD5 in hex; anything else as written.

    Medusa's own values are ETags as the proxy reported them, multipart ones included
    (``<hex>-<parts>``), which are no MD5 and must come back byte for byte.
    """
    try:
        return source_md5_hex(value)
    except (ValueError, AttributeError):
        return value


def restore(body: bytes) -> bytes:
    """The manifest as Medusa wrote it: source values back in ``size``/``MD5``.

    The old in-Medusa encryption wrote ``source_MD5`` in base64; Medusa compares ``MD5`` with hex
    ETags, so it is given back in hex.
    """
    document = _parse(body)
    if document is None:
        return body
    changed = False
    for entry in _entries(document):
        if SOURCE_SIZE in entry and SOURCE_MD5 in entry:
            entry["size"] = entry.pop(SOURCE_SIZE)
            entry["MD5"] = _medusa_md5(entry.pop(SOURCE_MD5))
            changed = True
    return _dump(document) if changed else body


def stored_entries(body: bytes) -> list[dict[str, Any]]:
    """Every object entry of a stored manifest (for the key-less integrity check)."""
    document = _parse(body)
    return [] if document is None else list(_entries(document))
