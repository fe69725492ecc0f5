"""Format constants of the encrypted object format (see docs/FORMAT.md).

Changing any of these changes the stored format: the known-answer vectors in
tests/unit/format/vectors must break when they do.
"""

from typing import Final

#: Plaintext bytes per chunk record (the last chunk of a part may be shorter).
CHUNK_SIZE: Final = 1024 * 1024
#: Binding header inside every chunk plaintext: part_number u32 BE + chunk_index u32 BE.
HEADER_SIZE: Final = 8
#: Fernet token: version (1) + timestamp (8) + IV (16) ... HMAC-SHA256 (32).
FERNET_VERSION: Final = 0x80
TOKEN_PREFIX_SIZE: Final = 1 + 8 + 16
HMAC_SIZE: Final = 32
BLOCK_SIZE: Final = 16
#: Every chunk record is exactly RECORD_OVERHEAD + m bytes for m plaintext bytes.
RECORD_OVERHEAD: Final = 85
#: Smallest and largest L of a chunk record (the u32 length prefix excluded).
MIN_CHUNK_L: Final = RECORD_OVERHEAD - 4
#: The trailer record body begins with this magic (a chunk token begins with 0x80).
TRAILER_MAGIC: Final = b"MCPT"
TRAILER_VERSION: Final = 1
#: Version 2: envelope keys (a random data key per object, wrapped in the trailer).
TRAILER_VERSION_ENVELOPE: Final = 2
TRAILER_MAC_CONTEXT: Final = b"MCPT-mac-v1"
#: Footer: u32 BE trailer_record_len + this magic; the last 12 bytes of every object.
FOOTER_MAGIC: Final = b"MCPTEND1"
FOOTER_SIZE: Final = 12
#: Suffix read that holds any trailer with an object key <= 1024 bytes and <= ~180 runs.
TRAILER_PROBE: Final = 4096
#: Fixed part of a trailer record: 4 (L) + 74 (body without runs/key) + 32 (mac) + 12.
TRAILER_FIXED_SIZE: Final = 4 + 74 + HMAC_SIZE + FOOTER_SIZE
#: Upper bound on a trailer record a parser accepts (65535 runs and a 65535-byte key, and for
#: version 2 a provider byte and three fields of at most 65535 bytes with their u16 lengths).
MAX_TRAILER_RECORD: Final = TRAILER_FIXED_SIZE + 16 * 0xFFFF + 0xFFFF + 1 + 3 * (2 + 0xFFFF)
#: Key derivation labels.
KEY_ID_CONTEXT: Final = b"medusa-crypt-proxy/key-id/v1"
KEY_ID_SIZE: Final = 8
SALT_SIZE: Final = 16
HKDF_INFO: Final = b"medusa-crypt-proxy/object/v1"
#: Version 2: the per-object keys derive from the data key, and a local master key wraps data
#: keys with a key derived for that alone.
HKDF_INFO_ENVELOPE: Final = b"medusa-crypt-proxy/object/v2"
WRAP_HKDF_INFO: Final = b"medusa-crypt-proxy/wrap/v2"
DATA_KEY_SIZE: Final = 32
#: Who wrapped a version 2 data key (the trailer's provider byte).
PROVIDER_LOCAL: Final = 1
PROVIDER_AWS_KMS: Final = 2
#: Part number used for an object written by a single PUT (and by encrypt_file).
SINGLE_PUT_PART_NUMBER: Final = 1


def max_chunk_l(chunk_size: int = CHUNK_SIZE) -> int:
    """Largest valid L of a chunk record for this chunk size."""
    return MIN_CHUNK_L + chunk_size
