"""Master keys, key ids, data keys and the keys derived from them (docs/FORMAT.md, "Keys").

Pure: no files (``proxy.keyfiles`` reads and writes key files). Key material never appears in
reprs, logs or exceptions; only the 8-byte key id (a hash of the key) is shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from proxy.format.constants import (
    DATA_KEY_SIZE,
    HKDF_INFO,
    HKDF_INFO_ENVELOPE,
    KEY_ID_CONTEXT,
    KEY_ID_SIZE,
    PROVIDER_LOCAL,
    SALT_SIZE,
    WRAP_HKDF_INFO,
)
from proxy.format.errors import TamperedError, UnknownKeyError

__all__ = [
    "MANIFEST_HKDF_INFO",
    "DataKey",
    "InvalidKeyError",
    "KeyRing",
    "MasterKey",
    "ObjectKeys",
    "UnknownKeyError",
    "WrappedKey",
    "derive_manifest_key",
    "derive_object_keys",
    "key_id",
    "local_data_key",
    "parse_fernet_key",
    "unwrap_local",
]


class InvalidKeyError(ValueError):
    """Text that is not a Fernet key (no key material shown)."""


def key_id(raw32: bytes) -> bytes:
    """Stable 8-byte id of a master key: identifies it in trailers without revealing it."""
    if len(raw32) != 32:
        raise ValueError("a master key is 32 bytes")
    return hashlib.sha256(KEY_ID_CONTEXT + raw32).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A 32-byte Fernet master key and its id. repr shows the id only."""

    raw: bytes
    key_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("a master key is 32 bytes")
        object.__setattr__(self, "key_id", key_id(self.raw))

    @property
    def key_id_hex(self) -> str:
        """The key id as 16 hex characters, as shown in logs and `inspect`."""
        return self.key_id.hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id_hex})"


@dataclass(frozen=True, repr=False)
class ObjectKeys:
    """Per-object keys derived from the master key (version 1) or the data key (version 2,
    ``wrapped`` its wrapped form for the trailer) and the object's salt."""

    signing_key: bytes
    encryption_key: bytes
    mac_key: bytes
    key_id: bytes
    salt: bytes
    wrapped: WrappedKey | None = None

    def __repr__(self) -> str:
        return f"ObjectKeys(key_id={self.key_id.hex()}, salt={self.salt.hex()})"

    def fernet_key(self) -> bytes:
        """The url-safe base64 Fernet key (signing || encryption) equivalent to these keys."""
        return base64.urlsafe_b64encode(self.signing_key + self.encryption_key)


@dataclass(frozen=True)
class WrappedKey:
    """A data key as the trailer keeps it: who wrapped it (``provider``), under which of its
    keys (``key_ref``: empty for a local key, named by the trailer's key id; a KMS key's ARN),
    the wrapped bytes, and the bucket of its KMS encryption context (empty for a local key)."""

    provider: int
    key_ref: str
    blob: bytes
    context_bucket: str = ""

    def to_bytes(self) -> bytes:
        """The trailer's envelope fields (docs/FORMAT.md, "Version 2"): the provider byte, then
        the key reference, the wrapped key and the context bucket, each after its u16 length."""
        fields = [self.key_ref.encode("utf-8"), self.blob, self.context_bucket.encode("utf-8")]
        if not 0 < self.provider < 256 or any(len(f) > 0xFFFF for f in fields):
            raise ValueError("wrapped data key fields too large for a trailer")
        return bytes([self.provider]) + b"".join(len(f).to_bytes(2, "big") + f for f in fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedKey:
        """The fields ``to_bytes`` wrote, filling ``data`` exactly; TamperedError else."""
        if not data:
            raise TamperedError("no wrapped data key")
        pos, fields = 1, []
        for _ in range(3):
            n = int.from_bytes(data[pos : pos + 2], "big")
            if pos + 2 + n > len(data):
                raise TamperedError("trailer envelope fields inconsistent with its length")
            fields.append(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
        if pos != len(data):
            raise TamperedError("trailer envelope fields inconsistent with its length")
        try:
            return cls(data[0], fields[0].decode("utf-8"), fields[1], fields[2].decode("utf-8"))
        except UnicodeDecodeError:
            raise TamperedError("trailer envelope names are not UTF-8") from None


@dataclass(frozen=True, repr=False)
class DataKey:
    """An object's (or a multipart upload's) random data key, its wrapped form and the id of
    the key that wrapped it. The per-object keys derive from it (format version 2)."""

    raw: bytes
    wrapped: WrappedKey
    key_id: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()}, provider={self.wrapped.provider})"


def _wrapping_key(master: MasterKey) -> bytes:
    """The AES-256 key a local master key wraps data keys with (its own HKDF label)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=WRAP_HKDF_INFO).derive(master.raw)


def local_data_key(master: MasterKey, raw: bytes | None = None) -> DataKey:
    """A new random data key (``raw`` for known-answer tests), wrapped by ``master`` with
    AES key wrap (RFC 3394)."""
    raw = os.urandom(DATA_KEY_SIZE) if raw is None else raw
    blob = aes_key_wrap(_wrapping_key(master), raw)
    return DataKey(raw, WrappedKey(PROVIDER_LOCAL, "", blob), master.key_id)


def unwrap_local(master: MasterKey, wrapped: WrappedKey) -> DataKey:
    """The data key ``master`` wrapped; TamperedError when the wrapped bytes do not unwrap
    under it (AES key wrap's integrity check)."""
    try:
        raw = aes_key_unwrap(_wrapping_key(master), wrapped.blob)
    except (InvalidUnwrap, ValueError):
        raise TamperedError("the trailer's wrapped data key does not unwrap under its master key") from None
    if len(raw) != DATA_KEY_SIZE:
        raise TamperedError("the trailer's wrapped data key has the wrong length")
    return DataKey(raw, wrapped, master.key_id)


def derive_object_keys(source: bytes | MasterKey | DataKey, salt16: bytes) -> ObjectKeys:
    """HKDF-SHA256 the master key (format version 1) or the data key (version 2) with the
    object's random salt, so that every object has its own Fernet key and chunks cannot move
    between objects unnoticed."""
    if len(salt16) != SALT_SIZE:
        raise ValueError(f"a salt is {SALT_SIZE} bytes")
    if isinstance(source, DataKey):
        raw, info, wrapping_id = source.raw, HKDF_INFO_ENVELOPE, source.key_id
    else:
        raw = source.raw if isinstance(source, MasterKey) else source
        if len(raw) != 32:
            raise ValueError("a master key is 32 bytes")
        info, wrapping_id = HKDF_INFO, key_id(raw)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt16, info=info).derive(raw)
    return ObjectKeys(
        signing_key=okm[0:16],
        encryption_key=okm[16:32],
        mac_key=okm[32:64],
        key_id=wrapping_id,
        salt=bytes(salt16),
        wrapped=source.wrapped if isinstance(source, DataKey) else None,
    )


#: HKDF info of the per-manifest MAC key (docs/FORMAT.md, "Authenticated manifests").
MANIFEST_HKDF_INFO = b"medusa-crypt-proxy/manifest/v1"


def derive_manifest_key(master_raw32: bytes | MasterKey, salt16: bytes) -> bytes:
    """The 32-byte MAC key of one stored manifest: HKDF-SHA256 of the master key with the
    manifest's random salt (its own info label, so it never equals an object's key)."""
    raw = master_raw32.raw if isinstance(master_raw32, MasterKey) else master_raw32
    if len(raw) != 32:
        raise ValueError("a master key is 32 bytes")
    if len(salt16) != SALT_SIZE:
        raise ValueError(f"a salt is {SALT_SIZE} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt16, info=MANIFEST_HKDF_INFO).derive(raw)


def parse_fernet_key(text: bytes | str) -> MasterKey:
    """Decode a Fernet key (url-safe base64 of 32 bytes, whitespace ignored)."""
    if isinstance(text, str):
        text = text.encode("ascii", errors="replace")
    stripped = b"".join(text.split())
    try:
        raw = base64.urlsafe_b64decode(stripped)
    except (binascii.Error, ValueError):
        raise InvalidKeyError("not a Fernet key (invalid url-safe base64)") from None
    if len(stripped) != 44 or len(raw) != 32:
        raise InvalidKeyError("not a Fernet key (expected 44 base64 characters encoding 32 bytes)")
    return MasterKey(raw)


class KeyRing:
    """Master keys: the first (primary) encrypts, every key decrypts (rotation)."""

    def __init__(self, keys: Sequence[MasterKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys: tuple[MasterKey, ...] = tuple(keys)
        self._by_id: dict[bytes, MasterKey] = {}
        for k in self._keys:
            self._by_id.setdefault(k.key_id, k)

    @property
    def primary(self) -> MasterKey:
        """The key new objects are encrypted with."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """All keys, primary first."""
        return self._keys

    def get(self, key_id: bytes) -> MasterKey:
        """The key with this id, or UnknownKeyError naming the missing id."""
        try:
            return self._by_id[bytes(key_id)]
        except KeyError:
            raise UnknownKeyError(bytes(key_id).hex()) from None

    def __contains__(self, key_id: object) -> bool:
        return isinstance(key_id, bytes | bytearray) and bytes(key_id) in self._by_id

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids=[{', '.join(k.key_id_hex for k in self._keys)}])"
