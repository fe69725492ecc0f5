"""Authenticated manifests: a MAC appended as the last element of the manifest's JSON array.

Pure and synchronous (see docs/FORMAT.md, "Authenticated manifests"). A manifest as the proxy
rewrites it is a JSON array ``R = P || "]"``; the bucket holds ``P || SEP || SEAL``::

    SEAL = {"medusa_crypt_proxy": {"version": 1, "key_id": "<16 hex>", "salt": "<32 hex>",
            "mac": "<64 hex>"}}]                      (one line, exactly this shape)
    SEP  = ", "   ("" when P is "[", the empty manifest)
    mac_key = HKDF-SHA256(ikm = master raw32, salt = salt16, info = "medusa-crypt-proxy/manifest/v1", L = 32)
    mac     = HMAC-SHA256(mac_key, "MCPM-mac-v1" || u16(len(k)) || k || P)

``k`` is the object key (UTF-8, without the bucket), so a manifest moved to another name fails.
The stored text stays a readable JSON array without the key; verifying needs no JSON parser:
the seal is matched byte for byte at the end and the MAC compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.format import keys as _keys
from proxy.format.constants import KEY_ID_SIZE, SALT_SIZE
from proxy.format.errors import TamperedError

if TYPE_CHECKING:
    from proxy.format.keys import KeyRing, MasterKey

__all__ = [
    "MAC_CONTEXT",
    "MARKER",
    "SEAL_SIZE",
    "ManifestSealError",
    "Seal",
    "find_seal",
    "manifest_mac",
    "seal",
    "seal_in_place",
    "verify_manifest",
]

#: Name of the seal element's only member.
MARKER = "medusa_crypt_proxy"
MAC_CONTEXT = b"MCPM-mac-v1"
SEAL_VERSION = 1
SEPARATOR = b", "
MAC_SIZE = 32
MAX_OBJECT_KEY = 0xFFFF

_SEAL = re.compile(
    rb'\{"medusa_crypt_proxy": \{"version": 1, "key_id": "([0-9a-f]{16})", '
    rb'"salt": "([0-9a-f]{32})", "mac": "([0-9a-f]{64})"\}\}\]'
)
#: Length of SEAL (the separator excluded): 188 bytes.
SEAL_SIZE = len(b'{"medusa_crypt_proxy": {"version": 1, "key_id": "", "salt": "", "mac": ""}}]') + 2 * (
    KEY_ID_SIZE + SALT_SIZE + MAC_SIZE
)
_MARKER_BYTES = b'{"' + MARKER.encode() + b'"'


class ManifestSealError(TamperedError):
    """A stored manifest's seal is missing, malformed or does not verify."""


@dataclass(frozen=True)
class Seal:
    """The seal found at the end of a stored manifest (not yet verified)."""

    key_id: bytes
    salt: bytes
    mac: bytes
    body_len: int  # len(P): the MAC covers stored[0:body_len]

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def manifest_len(self) -> int:
        """Length of the manifest as the proxy rewrote it, ``P || "]"``."""
        return self.body_len + 1


def _encoded_key(object_key: str) -> bytes:
    k = object_key.encode("utf-8")
    if len(k) > MAX_OBJECT_KEY:
        raise ValueError("object key too long for a manifest MAC")
    return k


def manifest_mac(mac_key: bytes, object_key: str, body: bytes | bytearray | memoryview) -> bytes:
    """``HMAC-SHA256(mac_key, "MCPM-mac-v1" || u16(len(k)) || k || body)``."""
    k = _encoded_key(object_key)
    h = hmac.new(mac_key, MAC_CONTEXT + len(k).to_bytes(2, "big") + k, hashlib.sha256)
    h.update(body)
    return h.digest()


def seal_element(key_id: bytes, salt: bytes, mac: bytes) -> bytes:
    """SEAL for these values (``}}]`` included)."""
    return (
        b'{"medusa_crypt_proxy": {"version": 1, "key_id": "'
        + key_id.hex().encode()
        + b'", "salt": "'
        + salt.hex().encode()
        + b'", "mac": "'
        + mac.hex().encode()
        + b'"}}]'
    )


def _body_len(manifest: bytes | bytearray) -> tuple[int, bytes]:
    """len(P) and SEP for a rewritten manifest; ValueError when it cannot be sealed canonically."""
    if manifest == b"[]":
        return 1, b""
    if manifest.endswith(b"}]"):
        return len(manifest) - 1, SEPARATOR
    raise ValueError("only a JSON array ending in '}]' (or '[]' itself) can be sealed")


def seal_in_place(master: MasterKey, object_key: str, buf: bytearray, salt: bytes | None = None) -> None:
    """Turn the rewritten manifest in ``buf`` into its stored form (no copy of the body)."""
    body_len, separator = _body_len(buf)
    salt = os.urandom(SALT_SIZE) if salt is None else bytes(salt)
    mac_key = _keys.derive_manifest_key(master, salt)
    with memoryview(buf) as view, view[:body_len] as body:
        mac = manifest_mac(mac_key, object_key, body)
    del buf[body_len:]
    buf += separator
    buf += seal_element(master.key_id, salt, mac)


def seal(master: MasterKey, object_key: str, manifest: bytes, salt: bytes | None = None) -> bytes:
    """The stored form of ``manifest`` (``P || "]"``) under ``object_key``."""
    buf = bytearray(manifest)
    seal_in_place(master, object_key, buf, salt)
    return bytes(buf)


def find_seal(stored: bytes | bytearray | memoryview) -> Seal | None:
    """The seal at the end of ``stored``; None when there is none (an unauthenticated manifest).

    ManifestSealError when the end looks like a seal that is not in its exact canonical form.
    """
    n = len(stored)
    tail = bytes(stored[max(0, n - SEAL_SIZE - 8) :])
    match = _SEAL.fullmatch(tail, max(0, len(tail) - SEAL_SIZE))
    if match is None:
        if _MARKER_BYTES in tail:
            raise ManifestSealError("manifest MAC element malformed")
        return None
    rest = n - SEAL_SIZE
    if rest == 1 and bytes(stored[0:1]) == b"[":
        body_len = 1
    elif rest >= 3 and bytes(stored[rest - 3 : rest]) == b"}" + SEPARATOR:
        body_len = rest - len(SEPARATOR)
    else:
        raise ManifestSealError("manifest MAC element not where the proxy writes it")
    return Seal(
        bytes.fromhex(match[1].decode()), bytes.fromhex(match[2].decode()), bytes.fromhex(match[3].decode()), body_len
    )


def verify_manifest(
    keyring: KeyRing, stored: bytes | bytearray | memoryview, object_keys: str | Iterable[str]
) -> tuple[Seal, str]:
    """Verify a stored manifest; return its seal and the name (of ``object_keys``) it was written as.

    ``object_keys`` is the key it was read under, then any accepted old names (backups moved
    outside the proxy). Raises ManifestSealError (no MAC, malformed, mismatch) or
    UnknownKeyError naming the key id.
    """
    found = find_seal(stored)
    if found is None:
        raise ManifestSealError("manifest has no MAC (not written by the proxy, or its MAC was stripped)")
    master = keyring.get(found.key_id)
    mac_key = _keys.derive_manifest_key(master, found.salt)
    names = [object_keys] if isinstance(object_keys, str) else list(object_keys)
    with memoryview(stored) as view, view[: found.body_len] as body:
        for name in names:
            if hmac.compare_digest(manifest_mac(mac_key, name, body), found.mac):
                return found, name
    raise ManifestSealError("manifest MAC mismatch (edited, or stored under another name)")
