"""One exception hierarchy for the object format.

Messages say what failed and where (part, chunk index, stored offset) and never
contain key material.
"""


class FormatError(Exception):
    """Base class: the stored bytes cannot be turned into trustworthy plaintext."""


class TamperedError(FormatError):
    """Authentication or structure check failed: the bytes were modified."""


class TruncatedError(TamperedError):
    """The stored object ended early (missing records, partial record or no trailer)."""


class WrongObjectError(FormatError):
    """The object is valid but was written under another S3 key than the one requested."""


class UnknownKeyError(FormatError):
    """The object was encrypted with a master key that is not in the key ring."""

    def __init__(self, key_id_hex: str) -> None:
        super().__init__(f"object was encrypted with key id {key_id_hex}, which is not in the key ring")
        self.key_id_hex = key_id_hex


class UnsupportedFormatError(FormatError):
    """The trailer announces a format version or flag this code does not know."""
