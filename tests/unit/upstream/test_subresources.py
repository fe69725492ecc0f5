"""The sub-resource translation by botocore's model (proxy.upstream.subresources), in process: a
client's document becomes the parameters botocore serialises back to the same document, every
operation of the routing table is one botocore knows, and what a client gets wrong is a 400."""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree import ElementTree as ET

import pytest
from botocore.serialize import create_serializer

from proxy.s3.errors import S3Error
from proxy.s3.routing import SUBRESOURCE_OPERATIONS, SUBRESOURCES, route
from proxy.upstream.subresources import operation_model, reply_of, request_params

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
ACL = (
    f'<AccessControlPolicy xmlns="{NS}"><Owner><ID>abc</ID></Owner><AccessControlList>'
    '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">'
    "<URI>http://acs.amazonaws.com/groups/global/AuthenticatedUsers</URI></Grantee>"
    "<Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>"
).encode()
LIFECYCLE = (
    f'<LifecycleConfiguration xmlns="{NS}"><Rule><ID>r</ID><Filter><And><Prefix>tmp/</Prefix>'
    "<Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b</Key><Value>2</Value></Tag></And></Filter>"
    "<Status>Enabled</Status><Expiration><Days>3</Days></Expiration></Rule></LifecycleConfiguration>"
).encode()


def test_every_routed_operation_is_a_botocore_operation_with_its_method() -> None:
    for name, methods in SUBRESOURCES.items():
        for (method, on_object), operation in methods.items():
            model = operation_model(operation)
            assert model.http["method"] == method, operation
            assert ("{Key+}" in model.http["requestUri"]) == on_object, operation
            assert f"?{name}" in model.http["requestUri"], operation
            key = "k" if on_object else None
            assert route(method, "b", key, {name: ""}, {}).operation == operation
    assert len(SUBRESOURCE_OPERATIONS) == sum(len(m) for m in SUBRESOURCES.values())


def test_a_method_the_table_does_not_name_is_not_allowed() -> None:
    with pytest.raises(S3Error) as err:
        route("DELETE", "b", None, {"versioning": ""}, {})
    assert (err.value.code, err.value.status) == ("MethodNotAllowed", 405)


@pytest.mark.parametrize(
    ("operation", "body", "payload"),
    [
        ("PutBucketAcl", ACL, "AccessControlPolicy"),
        ("PutBucketLifecycleConfiguration", LIFECYCLE, "LifecycleConfiguration"),
    ],
)
def test_documents_survive_the_round_trip(operation: str, body: bytes, payload: str) -> None:
    """What botocore sends upstream for the client's document says what the client's said
    (the ACL's grantee type attribute and the lifecycle's repeated tags included)."""
    params = request_params(operation, "b", None, {}, {"Content-MD5": "not-for-these-bytes"}, body)
    assert "ContentMD5" not in params  # the client's checksum covered the client's bytes
    model = operation_model(operation)
    sent = create_serializer("rest-xml").serialize_to_request(params, model)["body"]
    assert _canonical(sent) == _canonical(body)
    # ... and the answer of the matching GET is that document again.
    get = operation.replace("Put", "Get")
    status, headers, answer = reply_of(get, {"ResponseMetadata": {"HTTPStatusCode": 200}, **params[payload]})
    assert status == 200 and headers["Content-Type"] == "application/xml"
    assert _canonical(answer) == _canonical(body)


def _canonical(document: bytes) -> list[tuple[str, str, str]]:
    """Every element as (path, text, attributes), sorted: S3 does not care for the members' order."""
    found: list[tuple[str, str, str]] = []

    def walk(element: ET.Element, path: str) -> None:
        path = f"{path}/{element.tag.split('}')[-1]}"
        found.append((path, (element.text or "").strip(), repr(sorted(element.attrib.items()))))
        for child in element:
            walk(child, path)

    walk(ET.fromstring(document), "")
    return sorted(found)


def test_headers_and_query_become_typed_parameters() -> None:
    params = request_params(
        "PutObjectRetention",
        "b",
        "k",
        {"versionId": "v1"},
        {"x-amz-bypass-governance-retention": "true"},
        f'<Retention xmlns="{NS}"><Mode>GOVERNANCE</Mode>'.encode()
        + b"<RetainUntilDate>2030-01-01T00:00:00Z</RetainUntilDate></Retention>",
    )
    assert params["VersionId"] == "v1" and params["BypassGovernanceRetention"] is True
    assert params["Retention"] == {"Mode": "GOVERNANCE", "RetainUntilDate": datetime(2030, 1, 1, tzinfo=UTC)}
    attributes = request_params(
        "GetObjectAttributes", "b", "k", {}, {"X-Amz-Object-Attributes": "ETag, ObjectSize"}, b""
    )
    assert attributes["ObjectAttributes"] == ["ETag", "ObjectSize"]


@pytest.mark.parametrize(
    "body",
    [
        b"",  # a required document missing
        b"<Tagging><TagSet>",  # not well-formed
        b"<Other/>",  # the wrong root
        b'<!DOCTYPE x [<!ENTITY a "b">]><Tagging/>',  # entities
    ],
)
def test_a_bad_document_is_malformed_xml(body: bytes) -> None:
    with pytest.raises(S3Error) as err:
        request_params("PutBucketTagging", "b", None, {}, {}, body)
    assert (err.value.code, err.value.status) == ("MalformedXML", 400)


def test_replies_carry_header_members_and_payloads() -> None:
    status, headers, body = reply_of(
        "PutObjectTagging", {"ResponseMetadata": {"HTTPStatusCode": 200}, "VersionId": "v"}
    )
    assert (status, headers, body) == (200, {"x-amz-version-id": "v"}, b"")
    status, headers, body = reply_of("GetBucketPolicy", {"ResponseMetadata": {"HTTPStatusCode": 200}, "Policy": "{}"})
    assert (body, headers["Content-Type"]) == (b"{}", "application/json")
    assert reply_of("DeleteBucketPolicy", {"ResponseMetadata": {"HTTPStatusCode": 204}}) == (204, {}, b"")
    _, _, body = reply_of("GetBucketVersioning", {"ResponseMetadata": {"HTTPStatusCode": 200}, "Status": "Enabled"})
    root = ET.fromstring(body)
    assert root.tag == f"{{{NS}}}VersioningConfiguration" and root.findtext(f"{{{NS}}}Status") == "Enabled"
