"""Classify stored bytes: ours, legacy plaintext, tampered, or the seed's base64 Fernet.

Downgrade safety: an object that looks like ours at either end is never classified as
plaintext, so stripping or corrupting a trailer cannot make the proxy serve ciphertext
(or attacker-chosen bytes) as a legacy object.
"""

from __future__ import annotations

from typing import Literal

from proxy.format.constants import CHUNK_SIZE, FERNET_VERSION, FOOTER_MAGIC, MIN_CHUNK_L

__all__ = ["HEAD_BYTES", "TAIL_BYTES", "Classification", "classify"]

Classification = Literal["encrypted", "legacy-plaintext", "tampered", "seed-fernet"]
#: Bytes of the head and tail that classify() needs (fewer: the object is that small).
HEAD_BYTES = 10
TAIL_BYTES = 12
_SEED_PREFIX = b"gAAAAA"


def classify(head: bytes, tail: bytes, size: int | None = None) -> Classification:
    """Classify an object from its first >= 10 and last >= 12 bytes.

    "encrypted": the footer magic ends it (the trailer must still be verified);
    "tampered": the first record parses as a chunk record of ours but the footer is gone;
    "seed-fernet": u32 length + base64 Fernet token (the seed's old in-Medusa format);
    "legacy-plaintext": anything else. A plaintext file that happens to start with a valid
    record header (u32 in [81, 81 + 1 MiB] then 0x80) is refused as "tampered", never
    mis-served; a plaintext ending in "MCPTEND1" is treated as encrypted and then fails
    trailer verification, also refused.
    """
    if size is not None and size == 0:
        return "legacy-plaintext"
    if len(tail) >= 12 and tail[-8:] == FOOTER_MAGIC:
        return "encrypted"
    if len(head) >= 5:
        L = int.from_bytes(head[:4], "big")
        if MIN_CHUNK_L <= L <= MIN_CHUNK_L + CHUNK_SIZE and head[4] == FERNET_VERSION:
            return "tampered"
        if head[4:10] == _SEED_PREFIX:
            return "seed-fernet"
    return "legacy-plaintext"
