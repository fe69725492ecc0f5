"""Sub-resource operations (versioning, policy, tagging, ACLs, object lock...) by botocore's model.

These carry no object data, so the proxy forwards them as they are, and one table-free
translation serves them all: botocore's S3 model says, for each operation, which request headers
and query parameters are which parameters and what the XML body is; the same model says how its
answer is written back as S3's XML. The client's document is parsed as safely as the proxy's own
bodies (``proxy.s3.xml.parse_document``) and re-serialised by botocore, which computes the
checksum the upstream wants (the client's own Content-MD5 covered the client's bytes, not these).

botocore's parser and serialiser are used through their private helpers (``_parse_shape``,
``_serialize``): botocore is pinned (constraints.txt), and tests/unit/upstream/
test_subresources.py round-trips every operation of the table, so an upgrade that changes them
fails there first.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime as http_date
from typing import Any
from xml.etree import ElementTree as ET

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape
from botocore.parsers import RestXMLParser
from botocore.serialize import RestXMLSerializer
from botocore.validate import ParamValidator

from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.s3.headers import parse_http_date

__all__ = ["botocore_name", "reply_of", "request_params", "url_encode_listing"]

# Headers of the client that are about the client's bytes, not the operation: botocore computes
# its own for the body it sends.
_NOT_FORWARDED = frozenset({"content-md5", "x-amz-sdk-checksum-algorithm"})

# The root element of answers whose output shape has no payload member (S3's documented names).
_ROOTS = {
    "GetBucketVersioning": "VersioningConfiguration",
    "GetBucketLifecycleConfiguration": "LifecycleConfiguration",
    "GetBucketTagging": "Tagging",
    "GetObjectTagging": "Tagging",
    "GetBucketAcl": "AccessControlPolicy",
    "GetObjectAcl": "AccessControlPolicy",
    "ListObjectVersions": "ListVersionsResult",
    "GetObjectAttributes": "GetObjectAttributesResponse",
}


@functools.cache
def _model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("s3")


def operation_model(operation: str) -> OperationModel:
    return _model().operation_model(operation)


def botocore_name(operation: str) -> str:
    """``GetBucketVersioning`` -> ``get_bucket_versioning``, botocore's client method."""
    return botocore.xform_name(operation)


def request_params(
    operation: str,
    bucket: str,
    key: str | None,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """botocore's parameters for a client's request, by the operation's input shape.

    Raises S3Error 400 (MalformedXML for the body, InvalidArgument for the rest) where botocore
    would refuse the parameters: its own validation error would otherwise look like an
    unreachable upstream.
    """
    model = operation_model(operation)
    shape = model.input_shape
    assert shape is not None and isinstance(shape, StructureShape)
    lowered = {name.lower(): value for name, value in headers.items()}
    params: dict[str, Any] = {"Bucket": bucket}
    if key is not None and "Key" in shape.members:
        params["Key"] = key
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = str(member.serialization.get("name", name))
        if location == "header" and wire.lower() not in _NOT_FORWARDED and wire.lower() in lowered:
            params[name] = _scalar(member, lowered[wire.lower()], wire)
        elif location == "querystring" and wire in query:
            params[name] = _scalar(member, query[wire], wire)
    payload = shape.serialization.get("payload")
    if payload is not None and body.strip():
        params[payload] = _payload(shape.members[payload], payload, body)
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        code = "MalformedXML" if payload is not None else "InvalidArgument"
        raise S3Error(code, f"the request does not describe a valid {operation}", 400)
    return params


def _scalar(shape: Shape, value: str, wire: str) -> Any:
    """A header or query value as the type the model gives it."""
    kind = shape.type_name
    try:
        if kind == "boolean":
            return value.strip().lower() == "true"
        if kind in ("integer", "long"):
            return int(value)
        if kind == "timestamp":
            return parse_http_date(value)
        if kind == "list":
            return [item.strip() for item in value.split(",") if item.strip()]
    except ValueError:
        raise S3Error("InvalidArgument", f"{wire} is not a valid {kind}", 400) from None
    return value


def _payload(shape: Shape, name: str, body: bytes) -> Any:
    """The request's body as its payload parameter: a document (parsed), or text (a policy)."""
    if shape.type_name == "string":
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("MalformedPolicy", "the document is not UTF-8", 400) from None
    if shape.type_name == "blob":
        return body
    root_name = str(shape.serialization.get("name", name))
    try:
        root = xml.parse_document(body, root_name)
        return RestXMLParser()._parse_shape(shape, root)
    except xml.MalformedXMLError as exc:
        raise S3Error("MalformedXML", str(exc), 400) from None
    except Exception:  # botocore's parser on a document of the wrong shape
        raise S3Error("MalformedXML", f"the {root_name} document does not match its schema", 400) from None


def reply_of(operation: str, result: Mapping[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for botocore's ``result``: what the upstream answered, as S3 says it."""
    model = operation_model(operation)
    status = int(result.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200)
    shape = model.output_shape
    headers: dict[str, str] = {}
    if shape is None or not isinstance(shape, StructureShape):
        return status, headers, b""
    body_members: dict[str, Any] = {}
    for name, member in shape.members.items():
        value = result.get(name)
        if value is None:
            continue
        if member.serialization.get("location") == "header":
            headers[str(member.serialization.get("name", name))] = _header_text(value)
        else:
            body_members[name] = value
    payload = shape.serialization.get("payload")
    if payload is not None:
        value = body_members.get(payload)
        member = shape.members[payload]
        if member.type_name == "string":
            headers["Content-Type"] = "application/json"
            return status, headers, (value or "").encode()
        if member.type_name == "blob":
            return status, headers, bytes(value or b"")
        root = str(member.serialization.get("name", payload))
        document = _serialise(member, value or {}, root)
    elif status == 204 or (not body_members and operation not in _ROOTS):
        return status, headers, b""
    else:
        document = _serialise(shape, body_members, _ROOTS.get(operation, operation + "Result"))
    headers["Content-Type"] = "application/xml"
    return status, headers, document


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return http_date(value.astimezone(UTC), usegmt=True)
    return str(value)


def _serialise(shape: Shape, value: Mapping[str, Any], root: str) -> bytes:
    """``value`` (of ``shape``) as the XML document ``<root xmlns=S3>``."""
    pseudo = ET.Element("")
    RestXMLSerializer()._serialize(shape, _present(shape, value), pseudo, root)
    element = next(iter(pseudo))
    element.set("xmlns", xml.S3_NS)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(element, encoding="utf-8", xml_declaration=False)


def _present(shape: Shape, value: Any) -> Any:
    """``value`` without None members nor members the shape does not know (botocore's serialiser
    stops at a None and fails on an unknown name)."""
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        return {
            name: _present(shape.members[name], item)
            for name, item in value.items()
            if item is not None and name in shape.members and "location" not in shape.members[name].serialization
        }
    if shape.type_name == "list" and isinstance(value, list):
        member = getattr(shape, "member")  # noqa: B009 (ListShape's member, untyped in botocore)
        return [_present(member, item) for item in value]
    return value


def url_encode_listing(result: dict[str, Any]) -> None:
    """A ListObjectVersions result (botocore's, keys decoded) with its keys URL-encoded, as S3 writes
    it for ``encoding-type=url``."""
    for name in ("Prefix", "Delimiter", "KeyMarker", "NextKeyMarker"):
        if result.get(name):
            result[name] = xml.url_encode(result[name])
    for group in ("Versions", "DeleteMarkers"):
        for entry in result.get(group) or ():
            entry["Key"] = xml.url_encode(entry["Key"])
    for prefix in result.get("CommonPrefixes") or ():
        prefix["Prefix"] = xml.url_encode(prefix["Prefix"])
    result["EncodingType"] = "url"
