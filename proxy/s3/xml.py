"""S3 XML response builders and request body parsers (pure, synchronous, stdlib only).

Builders take the dicts ``aiobotocore`` returns for an operation (possibly adjusted by the
service layer) and render the exact XML a client of S3 expects. Parsers turn the
CompleteMultipartUpload and DeleteObjects request bodies into small dataclasses and raise
:class:`MalformedXMLError` (a ``ValueError``) on anything the caller should answer with
S3's ``MalformedXML``.

Conventions for every builder:

* ``<?xml version="1.0" encoding="UTF-8"?>`` prolog, S3 namespace on the root element.
* Datetimes rendered as ``2026-11-29T05:00:00.000Z`` (UTC, millisecond precision; naive
  datetimes are taken as UTC).
* ETags always carry exactly one pair of quotes (``&quot;`` escaped); an empty or missing
  ETag still yields an empty ``<ETag></ETag>`` element. Object/upload ``StorageClass``
  defaults to ``STANDARD`` (Medusa raises ``KeyError`` when either element is missing).
* Text that XML 1.0 cannot carry (control characters) is written as a character reference,
  as S3 does; ``\\r`` is written as ``&#xD;`` so parsers do not normalise it away. Clients
  that need such keys ask for ``encoding-type=url``.

URL encoding: values in ``resp`` are expected *decoded*. That is what botocore gives when the
proxy calls ``list_objects``/``list_objects_v2`` upstream *without* ``EncodingType``: botocore
then sets ``EncodingType=url`` itself and decodes the affected fields with ``unquote_plus``
(``botocore.handlers.decode_list_object*``). ``resp["EncodingType"]`` is therefore ignored;
only the ``encoding_type`` argument (the client's ``encoding-type`` query parameter) decides
whether the output is encoded. Do not pass ``EncodingType`` upstream yourself: botocore
then decodes nothing and keys would be encoded twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import pairwise
from typing import Any
from urllib.parse import quote, unquote_plus
from xml.etree import ElementTree as ET
from xml.parsers import expat

__all__ = [
    "MAX_COMPLETE_BODY",
    "MAX_CONFIGURATION_BODY",
    "MAX_DELETE_BODY",
    "MAX_DELETE_KEYS",
    "MAX_PARTS",
    "S3_NS",
    "CompletedPart",
    "DeleteCondition",
    "MalformedXMLError",
    "ObjectIdentifier",
    "complete_multipart",
    "copy_object_result",
    "copy_part_result",
    "delete_result",
    "format_datetime",
    "initiate_multipart",
    "is_ascending",
    "list_buckets",
    "list_multipart_uploads",
    "list_objects_v1",
    "list_objects_v2",
    "list_parts",
    "location",
    "parse_complete_multipart",
    "parse_create_bucket",
    "parse_delete",
    "parse_document",
    "quote_etag",
    "url_encode",
]

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n'

#: Largest CompleteMultipartUpload body accepted (10,000 pretty-printed parts with
#: SHA-256 checksums fit with room to spare).
MAX_COMPLETE_BODY = 4 * 1024 * 1024
#: Most parts in one CompleteMultipartUpload (S3's limit).
MAX_PARTS = 10_000
#: Largest DeleteObjects body accepted (1,000 keys of 1,024 bytes, escaped, fit).
MAX_DELETE_BODY = 4 * 1024 * 1024
#: Most keys in one DeleteObjects request (S3's limit).
MAX_DELETE_KEYS = 1000
#: Largest CreateBucketConfiguration body accepted (it holds one short element).
MAX_CREATE_BUCKET_BODY = 64 * 1024
#: Largest sub-resource configuration body accepted (S3's own limit for a lifecycle is 20 KB,
#: for a policy 20 KB; ACLs and tag sets are smaller).
MAX_CONFIGURATION_BODY = 1024 * 1024

_MAX_DEPTH = 16

# --------------------------------------------------------------------------- helpers


def format_datetime(value: datetime | str) -> str:
    """Render a datetime as S3 does: ``2026-11-29T05:00:00.000Z`` (strings pass through)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def quote_etag(etag: str | None) -> str:
    """Return ``etag`` with exactly one pair of double quotes (``""`` stays empty)."""
    if not etag:
        return ""
    bare = etag.strip().strip('"')
    return f'"{bare}"' if bare else ""


def url_encode(value: str) -> str:
    """URL-encode a key-like value as S3 does for ``encoding-type=url`` (``/`` kept).

    Spaces become ``%20`` and ``+`` becomes ``%2B``, so both ``unquote`` and botocore's
    ``unquote_plus`` give the original back.
    """
    return quote(value, safe="/")


# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
# \r is legal but parsers normalise it to \n, so it is written as a reference too.
_NEEDS_ESCAPE = re.compile('[&<>"\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]')
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    return _ENTITIES.get(ch) or f"&#x{ord(ch):X};"


def _escape(text: str) -> str:
    return _NEEDS_ESCAPE.sub(_escape_char, text)


class _Doc:
    """Minimal XML writer: one root with the S3 namespace, nested elements, escaped text."""

    def __init__(self, root: str) -> None:
        self._parts: list[str] = [_PROLOG, f'<{root} xmlns="{S3_NS}">']
        self._stack: list[str] = [root]

    def open(self, name: str) -> None:
        self._parts.append(f"<{name}>")
        self._stack.append(name)

    def close(self) -> None:
        self._parts.append(f"</{self._stack.pop()}>")

    def leaf(self, name: str, value: Any) -> None:
        """Write ``<name>value</name>``; None is written as an empty element."""
        self._parts.append(f"<{name}>{_text(value)}</{name}>")

    def opt(self, name: str, value: Any) -> None:
        """Write ``<name>value</name>`` unless value is None."""
        if value is not None:
            self.leaf(name, value)

    def owner(self, name: str, value: Mapping[str, Any] | None) -> None:
        """Write an Owner/Initiator structure (ID, DisplayName) if given."""
        if value is None:
            return
        self.open(name)
        self.opt("ID", value.get("ID"))
        self.opt("DisplayName", value.get("DisplayName"))
        self.close()

    def etag(self, value: str | None) -> None:
        self.leaf("ETag", quote_etag(value))

    def checksums(self, source: Mapping[str, Any]) -> None:
        """Write every ``Checksum*`` string member of ``source`` (name-validated)."""
        for name, value in source.items():
            if _CHECKSUM_NAME.fullmatch(name) and isinstance(value, str):
                self.leaf(name, value)

    def text(self, value: str) -> None:
        """Write escaped text content into the current element."""
        self._parts.append(_escape(value))

    def to_bytes(self) -> bytes:
        while self._stack:
            self.close()
        return "".join(self._parts).encode("utf-8")


_CHECKSUM_NAME = re.compile(r"Checksum[A-Za-z0-9]+")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, int):
        return str(value)
    return _escape(str(value))


def _want_url(encoding_type: str | None) -> bool:
    if encoding_type is None:
        return False
    if encoding_type == "url":
        return True
    raise ValueError(f"unsupported encoding-type {encoding_type!r} (only 'url')")


def _enc(value: str | None, url: bool) -> str | None:
    if value is None or not url:
        return value
    return url_encode(value)


def _key_count(resp: Mapping[str, Any]) -> int:
    return len(resp.get("Contents") or ()) + len(resp.get("CommonPrefixes") or ())


def _contents(doc: _Doc, contents: Iterable[Mapping[str, Any]], url: bool) -> None:
    for obj in contents:
        doc.open("Contents")
        doc.leaf("Key", _enc(obj.get("Key", ""), url))
        doc.opt("LastModified", obj.get("LastModified"))
        doc.etag(obj.get("ETag"))
        for algorithm in obj.get("ChecksumAlgorithm") or ():
            doc.leaf("ChecksumAlgorithm", algorithm)
        doc.opt("ChecksumType", obj.get("ChecksumType"))
        doc.leaf("Size", obj.get("Size", 0))
        doc.owner("Owner", obj.get("Owner"))
        doc.leaf("StorageClass", obj.get("StorageClass") or "STANDARD")
        restore = obj.get("RestoreStatus")
        if restore is not None:
            doc.open("RestoreStatus")
            doc.opt("IsRestoreInProgress", restore.get("IsRestoreInProgress"))
            doc.opt("RestoreExpiryDate", restore.get("RestoreExpiryDate"))
            doc.close()
        doc.close()


def _common_prefixes(doc: _Doc, prefixes: Iterable[Mapping[str, Any]], url: bool) -> None:
    for cp in prefixes:
        doc.open("CommonPrefixes")
        doc.leaf("Prefix", _enc(cp.get("Prefix", ""), url))
        doc.close()


# --------------------------------------------------------------------------- builders


def list_buckets(resp: Mapping[str, Any]) -> bytes:
    """ListAllMyBucketsResult from a ``list_buckets`` response dict."""
    doc = _Doc("ListAllMyBucketsResult")
    doc.owner("Owner", resp.get("Owner"))
    doc.open("Buckets")
    for bucket in resp.get("Buckets") or ():
        doc.open("Bucket")
        doc.leaf("Name", bucket.get("Name", ""))
        doc.opt("CreationDate", bucket.get("CreationDate"))
        doc.opt("BucketRegion", bucket.get("BucketRegion"))
        doc.close()
    doc.close()
    doc.opt("ContinuationToken", resp.get("ContinuationToken"))
    doc.opt("Prefix", resp.get("Prefix"))
    return doc.to_bytes()


def list_objects_v2(resp: Mapping[str, Any], encoding_type: str | None = None) -> bytes:
    """ListBucketResult (v2) from a ``list_objects_v2`` response dict with decoded values.

    With ``encoding_type="url"`` Key, Prefix, Delimiter, StartAfter and CommonPrefixes are
    URL-encoded and ``<EncodingType>url</EncodingType>`` is emitted.
    """
    url = _want_url(encoding_type)
    doc = _Doc("ListBucketResult")
    doc.leaf("Name", resp.get("Name", ""))
    doc.leaf("Prefix", _enc(resp.get("Prefix", ""), url))
    doc.opt("Delimiter", _enc(resp.get("Delimiter"), url))
    doc.opt("MaxKeys", resp.get("MaxKeys"))
    doc.leaf("KeyCount", resp.get("KeyCount", _key_count(resp)))
    doc.leaf("IsTruncated", bool(resp.get("IsTruncated", False)))
    doc.opt("ContinuationToken", resp.get("ContinuationToken"))
    doc.opt("NextContinuationToken", resp.get("NextContinuationToken"))
    doc.opt("StartAfter", _enc(resp.get("StartAfter"), url))
    if url:
        doc.leaf("EncodingType", "url")
    _contents(doc, resp.get("Contents") or (), url)
    _common_prefixes(doc, resp.get("CommonPrefixes") or (), url)
    return doc.to_bytes()


def list_objects_v1(resp: Mapping[str, Any], encoding_type: str | None = None) -> bytes:
    """ListBucketResult (v1) from a ``list_objects`` response dict with decoded values.

    botocore's ``decode_list_object`` decodes Marker, NextMarker, Delimiter, Key and
    CommonPrefixes but *not* Prefix; so when ``resp["EncodingType"] == "url"`` (botocore
    set it) ``resp["Prefix"]`` is taken as still encoded and decoded here first.
    With ``encoding_type="url"`` Key, Prefix, Delimiter, Marker, NextMarker and
    CommonPrefixes are URL-encoded in the output.
    """
    url = _want_url(encoding_type)
    prefix = resp.get("Prefix", "")
    if prefix and resp.get("EncodingType") == "url":
        prefix = unquote_plus(prefix)
    doc = _Doc("ListBucketResult")
    doc.leaf("Name", resp.get("Name", ""))
    doc.leaf("Prefix", _enc(prefix, url))
    doc.leaf("Marker", _enc(resp.get("Marker", ""), url))
    doc.opt("NextMarker", _enc(resp.get("NextMarker"), url))
    doc.opt("MaxKeys", resp.get("MaxKeys"))
    doc.opt("Delimiter", _enc(resp.get("Delimiter"), url))
    doc.leaf("IsTruncated", bool(resp.get("IsTruncated", False)))
    if url:
        doc.leaf("EncodingType", "url")
    _contents(doc, resp.get("Contents") or (), url)
    _common_prefixes(doc, resp.get("CommonPrefixes") or (), url)
    return doc.to_bytes()


def location(region: str | None) -> bytes:
    """LocationConstraint for GetBucketLocation (``us-east-1``/None/"" → empty element)."""
    doc = _Doc("LocationConstraint")
    if region and region != "us-east-1":
        doc.text(region)
    return doc.to_bytes()


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    """InitiateMultipartUploadResult."""
    doc = _Doc("InitiateMultipartUploadResult")
    doc.leaf("Bucket", bucket)
    doc.leaf("Key", key)
    doc.leaf("UploadId", upload_id)
    return doc.to_bytes()


def complete_multipart(
    location: str,
    bucket: str,
    key: str,
    etag: str | None,
    *,
    checksums: Mapping[str, str] | None = None,
) -> bytes:
    """CompleteMultipartUploadResult; ``checksums`` adds ``Checksum*`` elements (incl. Type)."""
    doc = _Doc("CompleteMultipartUploadResult")
    doc.leaf("Location", location)
    doc.leaf("Bucket", bucket)
    doc.leaf("Key", key)
    doc.etag(etag)
    doc.checksums(checksums or {})
    return doc.to_bytes()


def _copy_result(
    root: str,
    etag: str | None,
    last_modified: datetime | str,
    checksums: Mapping[str, str] | None,
) -> bytes:
    doc = _Doc(root)
    doc.leaf("LastModified", last_modified)
    doc.etag(etag)
    doc.checksums(checksums or {})
    return doc.to_bytes()


def copy_object_result(
    etag: str | None,
    last_modified: datetime | str,
    *,
    checksums: Mapping[str, str] | None = None,
) -> bytes:
    """CopyObjectResult (ETag, LastModified, optional ``Checksum*``)."""
    return _copy_result("CopyObjectResult", etag, last_modified, checksums)


def copy_part_result(
    etag: str | None,
    last_modified: datetime | str,
    *,
    checksums: Mapping[str, str] | None = None,
) -> bytes:
    """CopyPartResult (ETag, LastModified, optional ``Checksum*``)."""
    return _copy_result("CopyPartResult", etag, last_modified, checksums)


def list_parts(resp: Mapping[str, Any], encoding_type: str | None = None) -> bytes:
    """ListPartsResult from a ``list_parts`` response dict (``encoding_type`` encodes Key)."""
    url = _want_url(encoding_type)
    doc = _Doc("ListPartsResult")
    doc.leaf("Bucket", resp.get("Bucket", ""))
    doc.leaf("Key", _enc(resp.get("Key", ""), url))
    doc.leaf("UploadId", resp.get("UploadId", ""))
    doc.owner("Initiator", resp.get("Initiator"))
    doc.owner("Owner", resp.get("Owner"))
    doc.leaf("StorageClass", resp.get("StorageClass") or "STANDARD")
    doc.opt("PartNumberMarker", resp.get("PartNumberMarker"))
    doc.opt("NextPartNumberMarker", resp.get("NextPartNumberMarker"))
    doc.opt("MaxParts", resp.get("MaxParts"))
    doc.leaf("IsTruncated", bool(resp.get("IsTruncated", False)))
    doc.opt("ChecksumAlgorithm", resp.get("ChecksumAlgorithm"))
    doc.opt("ChecksumType", resp.get("ChecksumType"))
    if url:
        doc.leaf("EncodingType", "url")
    for part in resp.get("Parts") or ():
        doc.open("Part")
        doc.leaf("PartNumber", part.get("PartNumber", 0))
        doc.opt("LastModified", part.get("LastModified"))
        doc.etag(part.get("ETag"))
        doc.leaf("Size", part.get("Size", 0))
        doc.checksums(part)
        doc.close()
    return doc.to_bytes()


def list_multipart_uploads(resp: Mapping[str, Any], encoding_type: str | None = None) -> bytes:
    """ListMultipartUploadsResult from a ``list_multipart_uploads`` response dict.

    With ``encoding_type="url"`` KeyMarker, NextKeyMarker, Prefix, Delimiter, Key and
    CommonPrefixes are URL-encoded (botocore does not auto-encode this operation, so
    ``resp`` holds raw values when the proxy did not ask upstream for encoding).
    """
    url = _want_url(encoding_type)
    doc = _Doc("ListMultipartUploadsResult")
    doc.leaf("Bucket", resp.get("Bucket", ""))
    doc.leaf("KeyMarker", _enc(resp.get("KeyMarker", ""), url))
    doc.leaf("UploadIdMarker", resp.get("UploadIdMarker", ""))
    doc.opt("NextKeyMarker", _enc(resp.get("NextKeyMarker"), url))
    doc.opt("NextUploadIdMarker", resp.get("NextUploadIdMarker"))
    doc.opt("Prefix", _enc(resp.get("Prefix"), url))
    doc.opt("Delimiter", _enc(resp.get("Delimiter"), url))
    doc.opt("MaxUploads", resp.get("MaxUploads"))
    doc.leaf("IsTruncated", bool(resp.get("IsTruncated", False)))
    if url:
        doc.leaf("EncodingType", "url")
    for upload in resp.get("Uploads") or ():
        doc.open("Upload")
        doc.leaf("Key", _enc(upload.get("Key", ""), url))
        doc.leaf("UploadId", upload.get("UploadId", ""))
        doc.owner("Initiator", upload.get("Initiator"))
        doc.owner("Owner", upload.get("Owner"))
        doc.leaf("StorageClass", upload.get("StorageClass") or "STANDARD")
        doc.opt("Initiated", upload.get("Initiated"))
        doc.opt("ChecksumAlgorithm", upload.get("ChecksumAlgorithm"))
        doc.opt("ChecksumType", upload.get("ChecksumType"))
        doc.close()
    _common_prefixes(doc, resp.get("CommonPrefixes") or (), url)
    return doc.to_bytes()


def delete_result(
    deleted: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
    quiet: bool,
) -> bytes:
    """DeleteResult; ``quiet`` drops the Deleted entries (errors are always reported).

    ``deleted`` items: Key, VersionId?, DeleteMarker?, DeleteMarkerVersionId?;
    ``errors`` items: Key, VersionId?, Code, Message.
    """
    doc = _Doc("DeleteResult")
    if not quiet:
        for item in deleted:
            doc.open("Deleted")
            doc.leaf("Key", item.get("Key", ""))
            doc.opt("VersionId", item.get("VersionId"))
            doc.opt("DeleteMarker", item.get("DeleteMarker"))
            doc.opt("DeleteMarkerVersionId", item.get("DeleteMarkerVersionId"))
            doc.close()
    for item in errors:
        doc.open("Error")
        doc.leaf("Key", item.get("Key", ""))
        doc.opt("VersionId", item.get("VersionId"))
        doc.leaf("Code", item.get("Code", "InternalError"))
        doc.leaf("Message", item.get("Message", ""))
        doc.close()
    return doc.to_bytes()


# --------------------------------------------------------------------------- parsers


class MalformedXMLError(ValueError):
    """A request body is not well-formed, too large, or does not match the S3 schema."""


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One ``<Part>`` of a CompleteMultipartUpload body (ETag without quotes)."""

    part_number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteCondition:
    """What a conditional delete asks of the object it deletes (DeleteObject's ``If-Match``,
    ``x-amz-if-match-last-modified-time`` and ``x-amz-if-match-size``; a DeleteObjects
    ``<Object>``'s ``ETag``, ``LastModifiedTime`` and ``Size``): None is no condition."""

    etag: str | None = None
    last_modified: datetime | None = None
    size: int | None = None

    def __bool__(self) -> bool:
        return self.etag is not None or self.last_modified is not None or self.size is not None


@dataclass(frozen=True, slots=True)
class ObjectIdentifier:
    """One ``<Object>`` of a DeleteObjects body."""

    key: str
    version_id: str | None = None
    condition: DeleteCondition = field(default_factory=DeleteCondition)


class _Refused(Exception):
    pass


def parse_document(body: bytes, root_name: str, max_bytes: int = MAX_CONFIGURATION_BODY) -> ET.Element:
    """A client's configuration document (a bucket's tagging, ACL, lifecycle...) parsed as safely as
    the proxy's own bodies, its attributes kept (an ACL's ``xsi:type``) as ``{namespace}name``."""
    return _parse(body, root_name, max_bytes, attributes=True)


def _parse(body: bytes, root_name: str, max_bytes: int, attributes: bool = False) -> ET.Element:
    """Parse ``body`` safely (UTF-8 forced, no DTD/entities, bounded) and check the root."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedXMLError("request body must be bytes")
    body = bytes(body)
    if len(body) > max_bytes:
        raise MalformedXMLError(f"request body larger than {max_bytes} bytes")
    if not body.strip():
        raise MalformedXMLError("request body is empty")
    lowered = body.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise MalformedXMLError("DOCTYPE and ENTITY declarations are not allowed")

    builder = ET.TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > _MAX_DEPTH:
            raise _Refused("XML nested too deeply")
        kept = {("{" + k if "}" in k else k): v for k, v in attrs.items()} if attributes else {}
        builder.start("{" + name if "}" in name else name, kept)

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end("{" + name if "}" in name else name)

    def refuse(*_args: Any) -> int:
        raise _Refused("DOCTYPE and ENTITY declarations are not allowed")

    # encoding= overrides whatever the document declares: no UTF-16/EBCDIC tricks.
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(body, True)
        root = builder.close()
    except _Refused as exc:
        raise MalformedXMLError(str(exc)) from None
    except (expat.ExpatError, AssertionError) as exc:
        raise MalformedXMLError(f"XML is not well-formed: {exc}") from None
    if _local(root.tag) != root_name:
        raise MalformedXMLError(f"root element must be {root_name}, got {_local(root.tag)}")
    return root


def _local(tag: str) -> str:
    """Local name of ``tag``; only the S3 namespace (or none) is accepted."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        if ns != S3_NS:
            raise MalformedXMLError(f"unexpected XML namespace {ns!r} on <{name}>")
        return name
    return tag


def _children(element: ET.Element) -> list[tuple[str, ET.Element]]:
    return [(_local(child.tag), child) for child in element]


def _leaf_text(element: ET.Element, name: str) -> str:
    if len(element):
        raise MalformedXMLError(f"<{name}> must contain text only")
    return element.text or ""


def parse_complete_multipart(body: bytes, *, max_bytes: int = MAX_COMPLETE_BODY) -> list[CompletedPart]:
    """Parse a CompleteMultipartUpload body into parts, in document order.

    Each ``<Part>`` needs exactly one integer ``PartNumber`` and one ``ETag`` (quotes and
    surrounding whitespace stripped); ``Checksum*`` children are kept in ``checksums``.
    Part number range (1..10000) and order (:func:`is_ascending`) are the caller's checks.
    """
    root = _parse(body, "CompleteMultipartUpload", max_bytes)
    parts: list[CompletedPart] = []
    for name, child in _children(root):
        if name != "Part":
            raise MalformedXMLError(f"unexpected element <{name}> in CompleteMultipartUpload")
        if len(parts) >= MAX_PARTS:
            raise MalformedXMLError(f"more than {MAX_PARTS} parts")
        parts.append(_completed_part(child))
    if not parts:
        raise MalformedXMLError("CompleteMultipartUpload lists no parts")
    return parts


def _completed_part(element: ET.Element) -> CompletedPart:
    """One ``<Part>``: exactly one PartNumber and ETag, any ``Checksum*``."""
    number: int | None = None
    etag: str | None = None
    checksums: dict[str, str] = {}
    for name, sub in _children(element):
        text = _leaf_text(sub, name)
        if name == "PartNumber":
            if number is not None:
                raise MalformedXMLError("duplicate <PartNumber> in <Part>")
            number = _part_number(text)
        elif name == "ETag":
            if etag is not None:
                raise MalformedXMLError("duplicate <ETag> in <Part>")
            etag = text.strip().strip('"')
        elif _CHECKSUM_NAME.fullmatch(name):
            if name in checksums:
                raise MalformedXMLError(f"duplicate <{name}> in <Part>")
            checksums[name] = text.strip()
        else:
            raise MalformedXMLError(f"unexpected element <{name}> in <Part>")
    if number is None:
        raise MalformedXMLError("<Part> without <PartNumber>")
    if etag is None:
        raise MalformedXMLError("<Part> without <ETag>")
    return CompletedPart(number, etag, checksums)


def _part_number(text: str) -> int:
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 9:
        raise MalformedXMLError(f"invalid PartNumber {text!r}")
    return int(stripped)


def is_ascending(parts: Sequence[CompletedPart]) -> bool:
    """True if part numbers are strictly ascending (no duplicates)."""
    return all(a.part_number < b.part_number for a, b in pairwise(parts))


def parse_delete(body: bytes, *, max_bytes: int = MAX_DELETE_BODY) -> tuple[list[ObjectIdentifier], bool]:
    """Parse a DeleteObjects body into ``(objects, quiet)``.

    1..1000 ``<Object>`` elements, each with one ``Key`` (kept verbatim, whitespace
    included), an optional ``VersionId`` (empty → None) and the conditions of a conditional
    delete (``ETag``, ``LastModifiedTime``, ``Size``: botocore's ``ObjectIdentifier``).
    """
    root = _parse(body, "Delete", max_bytes)
    objects: list[ObjectIdentifier] = []
    quiet: bool | None = None
    for name, child in _children(root):
        if name == "Quiet":
            if quiet is not None:
                raise MalformedXMLError("duplicate <Quiet>")
            quiet = _quiet(child)
        elif name == "Object":
            if len(objects) >= MAX_DELETE_KEYS:
                raise MalformedXMLError(f"more than {MAX_DELETE_KEYS} keys in Delete")
            objects.append(_object_identifier(child))
        else:
            raise MalformedXMLError(f"unexpected element <{name}> in Delete")
    if not objects:
        raise MalformedXMLError("Delete lists no objects")
    return objects, bool(quiet)


def _quiet(element: ET.Element) -> bool:
    value = _leaf_text(element, "Quiet").strip().lower()
    if value not in ("true", "false"):
        raise MalformedXMLError(f"<Quiet> must be true or false, got {value!r}")
    return value == "true"


def _object_identifier(element: ET.Element) -> ObjectIdentifier:
    """One ``<Object>`` of a Delete: its Key, verbatim, and VersionId (empty -> None)."""
    key: str | None = None
    version_id: str | None = None
    conditions: dict[str, Any] = {}
    seen: set[str] = set()
    for name, sub in _children(element):
        text = _leaf_text(sub, name)
        if name in seen:
            raise MalformedXMLError(f"duplicate <{name}> in <Object>")
        seen.add(name)
        if name == "Key":
            key = text
        elif name == "VersionId":
            version_id = text.strip() or None
        elif name == "ETag":
            conditions["etag"] = text.strip()
        elif name == "LastModifiedTime":
            conditions["last_modified"] = _condition_time(text)
        elif name == "Size":
            conditions["size"] = _size(text)
        else:
            raise MalformedXMLError(f"unexpected element <{name}> in <Object>")
    if key is None:
        raise MalformedXMLError("<Object> without <Key>")
    return ObjectIdentifier(key, version_id, DeleteCondition(**conditions))


def _condition_time(text: str) -> datetime:
    """A timestamp as botocore writes it (RFC 822 here), or ISO 8601; naive is UTC."""
    value = text.strip()
    try:
        stamp = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedXMLError(f"invalid timestamp {text!r}") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _size(text: str) -> int:
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 19:
        raise MalformedXMLError(f"invalid Size {text!r}")
    return int(stripped)


def parse_create_bucket(body: bytes, *, max_bytes: int = MAX_CREATE_BUCKET_BODY) -> dict[str, str]:
    """A CreateBucket body (``CreateBucketConfiguration``) as botocore's parameter of that name.

    An empty body is no configuration (``{}``). Only ``LocationConstraint`` is understood; the
    directory-bucket and tag elements are refused rather than dropped.
    """
    if not bytes(body).strip():
        return {}
    root = _parse(body, "CreateBucketConfiguration", max_bytes)
    config: dict[str, str] = {}
    for name, child in _children(root):
        if name != "LocationConstraint":
            raise MalformedXMLError(f"unsupported element <{name}> in CreateBucketConfiguration")
        if "LocationConstraint" in config:
            raise MalformedXMLError("duplicate <LocationConstraint>")
        config["LocationConstraint"] = _leaf_text(child, name).strip()
    return config


# --------------------------------------------------------------------------- upstream listings

#: Largest listing page accepted from the upstream (1,000 keys of 1,024 bytes, URL-encoded, fit).
MAX_LIST_PAGE = 16 * 1024 * 1024

_LIST_INTS = {"MaxKeys", "KeyCount"}
_LIST_STRINGS = {
    "Name",
    "Prefix",
    "Delimiter",
    "Marker",
    "NextMarker",
    "ContinuationToken",
    "NextContinuationToken",
    "StartAfter",
    "EncodingType",
}
_LIST_DECODED = {"Prefix", "Delimiter", "Marker", "NextMarker", "StartAfter"}


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def _list_entry(element: ET.Element, decode: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for name, child in _children(element):
        if name == "Owner":
            entry["Owner"] = {sub_name: sub.text or "" for sub_name, sub in _children(child)}
            continue
        if name == "RestoreStatus":
            restore: dict[str, Any] = {}
            for sub_name, sub in _children(child):
                text = sub.text or ""
                restore[sub_name] = text == "true" if sub_name == "IsRestoreInProgress" else _timestamp(text)
            entry["RestoreStatus"] = restore
            continue
        text = _leaf_text(child, name)
        if name == "Key":
            entry["Key"] = unquote_plus(text) if decode else text
        elif name == "Size":
            entry["Size"] = int(text)
        elif name == "LastModified":
            entry["LastModified"] = _timestamp(text)
        elif name == "ChecksumAlgorithm":
            entry.setdefault("ChecksumAlgorithm", []).append(text)
        else:
            entry[name] = text
    return entry


def parse_list_objects(body: bytes) -> dict[str, Any]:
    """An upstream ListObjects/ListObjectsV2 page as botocore gives it: ints, booleans and
    datetimes typed, and URL-encoded values decoded when the page says ``EncodingType`` url.

    ValueError (MalformedXMLError) when the page is not a ListBucketResult.
    """
    root = _parse(body, "ListBucketResult", MAX_LIST_PAGE)
    children = _children(root)
    decode = any(name == "EncodingType" and (child.text or "") == "url" for name, child in children)
    page: dict[str, Any] = {"IsTruncated": False}
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, Any]] = []
    for name, child in children:
        if name == "Contents":
            contents.append(_list_entry(child, decode))
        elif name == "CommonPrefixes":
            for sub_name, sub in _children(child):
                if sub_name == "Prefix":
                    prefixes.append({"Prefix": unquote_plus(sub.text or "") if decode else sub.text or ""})
        elif name == "IsTruncated":
            page["IsTruncated"] = _leaf_text(child, name).strip() == "true"
        elif name in _LIST_INTS:
            page[name] = int(_leaf_text(child, name))
        elif name in _LIST_STRINGS:
            text = _leaf_text(child, name)
            page[name] = unquote_plus(text) if decode and name in _LIST_DECODED else text
    page.pop("EncodingType", None)  # values are decoded now
    if contents:
        page["Contents"] = contents
    if prefixes:
        page["CommonPrefixes"] = prefixes
    return page
