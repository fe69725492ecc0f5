"""The encrypted object format: pure, synchronous, streaming (see docs/FORMAT.md)."""

from proxy.format.codec import (
    DEFAULT_MAX_BUFFER,
    ObjectDecryptor,
    PartEncryptor,
    PartInfo,
    RangeDecryptor,
    build_trailer,
    decrypt_object,
    encrypt_object,
    new_salt,
)
from proxy.format.constants import CHUNK_SIZE, RECORD_OVERHEAD, TRAILER_PROBE
from proxy.format.detect import Classification, classify
from proxy.format.errors import (
    FormatError,
    TamperedError,
    TruncatedError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongObjectError,
)
from proxy.format.layout import (
    Layout,
    Location,
    RecordRef,
    Run,
    StoredRange,
    object_stored_size,
    part_plaintext_size_from_stored,
    part_stored_size,
    plaintext_size_from_stored,
    record_size,
)
from proxy.format.trailer import Trailer, parse_footer, verify_trailer

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_BUFFER",
    "RECORD_OVERHEAD",
    "TRAILER_PROBE",
    "Classification",
    "FormatError",
    "Layout",
    "Location",
    "ObjectDecryptor",
    "PartEncryptor",
    "PartInfo",
    "RangeDecryptor",
    "RecordRef",
    "Run",
    "StoredRange",
    "TamperedError",
    "Trailer",
    "TruncatedError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "WrongObjectError",
    "build_trailer",
    "classify",
    "decrypt_object",
    "encrypt_object",
    "new_salt",
    "object_stored_size",
    "parse_footer",
    "part_plaintext_size_from_stored",
    "part_stored_size",
    "plaintext_size_from_stored",
    "record_size",
    "verify_trailer",
]
