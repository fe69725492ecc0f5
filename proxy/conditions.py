"""HTTP conditional requests and Range headers, evaluated against the plaintext view. Pure.

Forwarding ``If-Match`` to the bucket would compare it with the ciphertext's ETag, so for encrypted
objects the proxy decides itself, with S3's rules (RFC 7232 with S3's precedence).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from proxy.s3.errors import S3Error


def _etags(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/").strip('"') for tag in value.split(",") if tag.strip()]


def _date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # S3 ignores an unparsable date condition


def check_conditions(headers: Mapping[str, str], etag: str, last_modified: datetime) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as S3 would for GET and HEAD."""
    etag = etag.strip('"')
    last_modified = last_modified.replace(microsecond=0)
    if_match = headers.get("if-match")
    if_none_match = headers.get("if-none-match")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and etag not in tags:
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})
    elif (since := headers.get("if-unmodified-since")) is not None:
        date = _date(since)
        if date is not None and last_modified > date:
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Unmodified-Since"})
    if if_none_match is not None:
        tags = _etags(if_none_match)
        if "*" in tags or etag in tags:
            raise _not_modified(etag, last_modified)
    elif (since := headers.get("if-modified-since")) is not None:
        date = _date(since)
        if date is not None and last_modified <= date:
            raise _not_modified(etag, last_modified)


def delete_conditions_hold(
    etag: str | None,
    last_modified: datetime | None,
    size: int | None,
    *,
    found_etag: str,
    found_modified: datetime,
    found_size: int,
) -> bool:
    """Whether a conditional delete's ETag (``*``: any), LastModifiedTime (to the second, as
    S3 keeps it) and Size hold for the object found (its plaintext view, for an encrypted one)."""
    if etag is not None and etag.strip() != "*" and etag.strip().strip('"') != found_etag.strip('"'):
        return False
    if last_modified is not None and _second(last_modified) != _second(found_modified):
        return False
    return size is None or size == found_size


def _second(when: datetime) -> int:
    """``when`` in whole seconds since the epoch (a naive time is UTC)."""
    return int((when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp())


def _not_modified(etag: str, last_modified: datetime) -> S3Error:
    """304, with the ETag and Last-Modified of the version the client has (as S3 sends them)."""
    err = S3Error("NotModified", "Not Modified", 304)
    err.headers = {"ETag": f'"{etag}"', "Last-Modified": format_datetime(last_modified.astimezone(UTC), usegmt=True)}
    return err


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def parse_range(value: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range over an object of ``size`` bytes; None means the whole object.

    Like S3: a header that is not a single byte range is ignored; a range that starts past the
    end is InvalidRange (416).
    """
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    start_s, dash, end_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if start_s == "":
            suffix = int(end_s)
            if suffix <= 0 or size == 0:
                raise _invalid_range(size)
            return ByteRange(max(0, size - suffix), size - 1)
        first = int(start_s)
        last = int(end_s) if end_s else size - 1
    except ValueError:
        return None
    if first >= size:
        raise _invalid_range(size)
    if first < 0 or last < first:
        return None
    return ByteRange(first, min(last, size - 1))


def _invalid_range(size: int) -> S3Error:
    return S3Error("InvalidRange", "The requested range is not satisfiable", 416, extra={"ActualObjectSize": str(size)})
