"""Tests for proxy.s3.xml: round trips through botocore's own parser and decoders."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import botocore.session
import pytest
from botocore import handlers
from botocore.parsers import RestXMLParser
from botocore.serialize import create_serializer

from proxy.s3 import xml as s3xml
from proxy.s3.xml import CompletedPart, DeleteCondition, MalformedXMLError, ObjectIdentifier

MODEL = botocore.session.get_session().get_service_model("s3")
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>'

T1 = datetime(2026, 11, 29, 5, 0, 0, 123000, tzinfo=UTC)
T2 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

# Keys botocore must get back unchanged through encoding-type=url.
TRICKY = [
    "plain",
    "a b",
    "a+b",
    "a + b+",
    "100%",
    "%20literal",
    "%2B",
    "dir/sub/file.db",
    "ünïcödé/日本語/😀",
    "a&b<c>\"d'e",
    "ctrl\x01\x02\x1f",
    "tab\tnl\ncr\rend",
    "~_.-!*'();:@=$,?#[]",
    " leading and trailing ",
    "",
]
XML_SAFE = [k for k in TRICKY if not any(ord(c) < 0x20 and c not in "\t\n\r" for c in k)]


def parse(op: str, body: bytes) -> dict[str, Any]:
    """Parse ``body`` as botocore would for operation ``op`` (metadata dropped)."""
    assert body.startswith(PROLOG)
    shape = MODEL.operation_model(op).output_shape
    parsed = RestXMLParser().parse({"body": body, "headers": {}, "status_code": 200}, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


def client_view(op: str, body: bytes) -> dict[str, Any]:
    """What a boto3 client sees: parse, then botocore's auto encoding-type decoder."""
    parsed = parse(op, body)
    decoder = {"ListObjectsV2": handlers.decode_list_object_v2, "ListObjects": handlers.decode_list_object}
    decoder[op](parsed=parsed, context={"encoding_type_auto_set": True})
    return parsed


def obj(key: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Key": key,
        "LastModified": T1,
        "ETag": '"0123456789abcdef0123456789abcdef"',
        "Size": 1234,
        "StorageClass": "STANDARD",
    }
    base.update(extra)
    return base


# --------------------------------------------------------------------------- helpers


def test_format_datetime() -> None:
    assert s3xml.format_datetime(T1) == "2026-11-29T05:00:00.123Z"
    assert s3xml.format_datetime(datetime(2026, 11, 29, 5, 0, 0, 999999)) == "2026-11-29T05:00:00.999Z"
    cet = timezone(timedelta(hours=1))
    assert s3xml.format_datetime(datetime(2026, 11, 29, 6, 0, tzinfo=cet)) == "2026-11-29T05:00:00.000Z"
    assert s3xml.format_datetime("2020-01-01T00:00:00.000Z") == "2020-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ('"abc"', '"abc"'),
        ("abc", '"abc"'),
        ('""abc""', '"abc"'),
        ("", ""),
        (None, ""),
        ('""', ""),
        ('"abc-3"', '"abc-3"'),
    ],
)
def test_quote_etag(raw: str | None, want: str) -> None:
    assert s3xml.quote_etag(raw) == want


def test_xml_escaping_of_control_characters() -> None:
    body = s3xml.list_objects_v2({"Name": "b", "Contents": [obj("a\x01b\rc&<>")]})
    assert b"<Key>a&#x1;b&#xD;c&amp;&lt;&gt;</Key>" in body


# --------------------------------------------------------------------------- ListObjectsV2


def v2_resp(keys: list[str], **extra: Any) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "IsTruncated": True,
        "Contents": [obj(k) for k in keys],
        "Name": "bucket",
        "Prefix": "",
        "MaxKeys": 1000,
        "KeyCount": len(keys),
        "ContinuationToken": "tok+/=en",
        "NextContinuationToken": "next/tok+en==",
    }
    resp.update(extra)
    return resp


def test_list_objects_v2_roundtrip_plain() -> None:
    resp = v2_resp(XML_SAFE, Delimiter="/", StartAfter="a b")
    resp["Contents"][0]["Owner"] = {"ID": "owner-id", "DisplayName": "me"}
    resp["CommonPrefixes"] = [{"Prefix": "dir one/"}, {"Prefix": "a&b/"}]
    resp["KeyCount"] += 2
    body = s3xml.list_objects_v2(resp, None)
    assert b"<EncodingType>" not in body
    assert f'<ListBucketResult xmlns="{NS}">'.encode() in body
    assert b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag>" in body
    assert parse("ListObjectsV2", body) == resp


@pytest.mark.parametrize("prefix", ["", "a b+c/%/ü/\x01"])
def test_list_objects_v2_roundtrip_url(prefix: str) -> None:
    resp = v2_resp(TRICKY, Prefix=prefix, Delimiter="+ /", StartAfter="ctrl\x01 +%")
    resp["CommonPrefixes"] = [{"Prefix": p} for p in ["x y/", "a+b/", "%/", "\x02/", "&<>/"]]
    resp["KeyCount"] += 5
    original = copy.deepcopy(resp)
    body = s3xml.list_objects_v2(resp, "url")
    assert resp == original  # input not mutated
    assert b"<EncodingType>url</EncodingType>" in body
    assert b"&#x" not in body  # nothing XML 1.0 cannot carry
    assert b"<Key>a%20b</Key>" in body and b"<Key>a%2Bb</Key>" in body
    assert b"<Key>dir/sub/file.db</Key>" in body
    seen = client_view("ListObjectsV2", body)
    assert seen.pop("EncodingType") == "url"
    assert seen == resp


def test_list_objects_v2_from_botocore_upstream() -> None:
    """Upstream (S3-style, space as '+') → botocore auto-decode → builder → client."""
    keys = ["a b", "a+b", "x%y", "ctrl\x01"]
    from urllib.parse import quote_plus

    upstream = (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
        "<Name>bucket</Name><Prefix>a%2B+</Prefix><KeyCount>4</KeyCount><MaxKeys>1000</MaxKeys>"
        "<Delimiter>%2F</Delimiter><IsTruncated>false</IsTruncated><EncodingType>url</EncodingType>"
        + "".join(
            f"<Contents><Key>{quote_plus(k)}</Key><LastModified>2026-11-29T05:00:00.123Z"
            "</LastModified><ETag>&quot;e&quot;</ETag><Size>1</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in keys
        )
        + "</ListBucketResult>"
    ).encode()
    resp = client_view("ListObjectsV2", upstream)  # what aiobotocore hands the proxy
    assert [c["Key"] for c in resp["Contents"]] == keys and resp["Prefix"] == "a+ "
    resp["Contents"][0]["Size"] = 99  # the service layer adjusts sizes
    seen = client_view("ListObjectsV2", s3xml.list_objects_v2(resp, "url"))
    assert seen == resp
    # Client without encoding-type: EncodingType must not leak from the upstream dict.
    resp_plain = copy.deepcopy(resp)
    resp_plain["Contents"] = resp_plain["Contents"][:3]
    resp_plain["KeyCount"] = 3
    body = s3xml.list_objects_v2(resp_plain, None)
    assert b"EncodingType" not in body
    resp_plain.pop("EncodingType")
    assert parse("ListObjectsV2", body) == resp_plain


def test_list_objects_v2_defaults() -> None:
    resp = {
        "Name": "b",
        "Contents": [{"Key": "k", "LastModified": T1, "Size": 5}, {"Key": "e", "ETag": "", "Size": 0}],
        "CommonPrefixes": [{"Prefix": "p/"}],
    }
    body = s3xml.list_objects_v2(resp)
    assert body.count(b"<StorageClass>STANDARD</StorageClass>") == 2
    assert body.count(b"<ETag></ETag>") == 2
    parsed = parse("ListObjectsV2", body)
    assert parsed["KeyCount"] == 3
    assert parsed["Prefix"] == ""
    assert parsed["IsTruncated"] is False
    assert [c["ETag"] for c in parsed["Contents"]] == ["", ""]
    assert all(c["StorageClass"] == "STANDARD" for c in parsed["Contents"])


def test_list_objects_v2_etag_normalised() -> None:
    resp = {"Name": "b", "Contents": [obj("a", ETag="abc"), obj("b", ETag='""d-2""')]}
    parsed = parse("ListObjectsV2", s3xml.list_objects_v2(resp))
    assert [c["ETag"] for c in parsed["Contents"]] == ['"abc"', '"d-2"']


def test_list_objects_v2_checksum_fields() -> None:
    resp = v2_resp(["k"])
    resp["Contents"][0].update(ChecksumAlgorithm=["CRC32"], ChecksumType="FULL_OBJECT")
    assert parse("ListObjectsV2", s3xml.list_objects_v2(resp)) == resp


def test_bad_encoding_type() -> None:
    with pytest.raises(ValueError):
        s3xml.list_objects_v2({"Name": "b"}, "base64")


# --------------------------------------------------------------------------- ListObjects (v1)


def v1_resp(keys: list[str], **extra: Any) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "IsTruncated": False,
        "Marker": "",
        "Contents": [obj(k) for k in keys],
        "Name": "bucket",
        "Prefix": "",
        "MaxKeys": 1000,
    }
    resp.update(extra)
    return resp


def test_list_objects_v1_roundtrip_plain() -> None:
    resp = v1_resp(XML_SAFE, Marker="m a+rk", NextMarker="n&xt", Delimiter="/", IsTruncated=True)
    resp["CommonPrefixes"] = [{"Prefix": "dir one/"}]
    body = s3xml.list_objects_v1(resp, None)
    assert b"<EncodingType>" not in body
    assert parse("ListObjects", body) == resp


def test_list_objects_v1_roundtrip_url() -> None:
    resp = v1_resp(TRICKY, Marker="m a+rk\x01", NextMarker="n%xt", Delimiter="+", IsTruncated=True)
    resp["CommonPrefixes"] = [{"Prefix": "x y+/"}]
    body = s3xml.list_objects_v1(resp, "url")
    assert b"&#x" not in body
    seen = client_view("ListObjects", body)
    assert seen.pop("EncodingType") == "url"
    # botocore's v1 decoder leaves Prefix encoded; "" stays "" either way.
    assert seen == resp


def test_list_objects_v1_prefix_quirk() -> None:
    """botocore does not decode v1 Prefix; the builder compensates when it set EncodingType."""
    upstream = (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
        "<Name>bucket</Name><Prefix>a+b%2B%25</Prefix><Marker></Marker><MaxKeys>1000</MaxKeys>"
        "<IsTruncated>false</IsTruncated><EncodingType>url</EncodingType>"
        "<Contents><Key>a+b%2B%25x</Key><LastModified>2026-11-29T05:00:00.123Z</LastModified>"
        "<ETag>&quot;e&quot;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>"
        "</ListBucketResult>"
    ).encode()
    resp = client_view("ListObjects", upstream)
    assert resp["Prefix"] == "a+b%2B%25"  # still encoded (botocore quirk)
    assert resp["Contents"][0]["Key"] == "a b+%x"
    plain = parse("ListObjects", s3xml.list_objects_v1(resp, None))
    assert plain["Prefix"] == "a b+%"
    assert plain["Contents"][0]["Key"] == "a b+%x"
    assert "EncodingType" not in plain
    encoded = parse("ListObjects", s3xml.list_objects_v1(resp, "url"))
    assert encoded["Prefix"] == "a%20b%2B%25"
    assert encoded["Contents"][0]["Key"] == "a%20b%2B%25x"


# --------------------------------------------------------------------------- ListBuckets


def test_list_buckets_roundtrip() -> None:
    resp = {
        "Buckets": [{"Name": "one", "CreationDate": T1}, {"Name": "two", "CreationDate": T2}],
        "Owner": {"DisplayName": "me & you", "ID": "abc123"},
    }
    body = s3xml.list_buckets(resp)
    assert f'<ListAllMyBucketsResult xmlns="{NS}">'.encode() in body
    assert b"<CreationDate>2026-11-29T05:00:00.123Z</CreationDate>" in body
    assert parse("ListBuckets", body) == resp


def test_list_buckets_empty() -> None:
    assert parse("ListBuckets", s3xml.list_buckets({"Buckets": []})) == {"Buckets": []}


# --------------------------------------------------------------------------- small results


@pytest.mark.parametrize(("region", "want"), [("us-east-1", ""), (None, ""), ("", ""), ("eu-west-1", "eu-west-1")])
def test_location(region: str | None, want: str) -> None:
    body = s3xml.location(region)
    assert f'<LocationConstraint xmlns="{NS}">'.encode() in body

    class Resp:
        raw = object()
        content = body

    parsed: dict[str, Any] = {}
    handlers.parse_get_bucket_location(parsed, Resp())
    assert (parsed["LocationConstraint"] or "") == want


def test_initiate_multipart() -> None:
    body = s3xml.initiate_multipart("bkt", "a b&c\x01", "up/id+1")
    assert f'<InitiateMultipartUploadResult xmlns="{NS}">'.encode() in body
    assert b"<Key>a b&amp;c&#x1;</Key>" in body
    body = s3xml.initiate_multipart("bkt", "a b&c", "up/id+1")
    assert parse("CreateMultipartUpload", body) == {"Bucket": "bkt", "Key": "a b&c", "UploadId": "up/id+1"}


def test_complete_multipart() -> None:
    body = s3xml.complete_multipart("http://h/bkt/k%20y", "bkt", "k y", "abc-2")
    assert parse("CompleteMultipartUpload", body) == {
        "Location": "http://h/bkt/k%20y",
        "Bucket": "bkt",
        "Key": "k y",
        "ETag": '"abc-2"',
    }
    body = s3xml.complete_multipart(
        "l", "b", "k", '"e-2"', checksums={"ChecksumCRC32": "AAAAAA==", "ChecksumType": "COMPOSITE"}
    )
    parsed = parse("CompleteMultipartUpload", body)
    assert parsed["ChecksumCRC32"] == "AAAAAA==" and parsed["ChecksumType"] == "COMPOSITE"
    assert b"<ETag></ETag>" in s3xml.complete_multipart("l", "b", "k", "")


def test_copy_results() -> None:
    body = s3xml.copy_object_result('"abc"', T1)
    assert f'<CopyObjectResult xmlns="{NS}">'.encode() in body
    assert parse("CopyObject", body) == {"CopyObjectResult": {"ETag": '"abc"', "LastModified": T1}}
    body = s3xml.copy_part_result("def", T2, checksums={"ChecksumSHA256": "x+/="})
    assert f'<CopyPartResult xmlns="{NS}">'.encode() in body
    assert parse("UploadPartCopy", body) == {
        "CopyPartResult": {"ETag": '"def"', "LastModified": T2, "ChecksumSHA256": "x+/="}
    }


# --------------------------------------------------------------------------- ListParts


def test_list_parts_roundtrip() -> None:
    resp = {
        "Bucket": "bkt",
        "Key": "dir/a b+c",
        "UploadId": "upload-1",
        "PartNumberMarker": 0,
        "NextPartNumberMarker": 2,
        "MaxParts": 1000,
        "IsTruncated": True,
        "Parts": [
            {"PartNumber": 1, "LastModified": T1, "ETag": '"p1"', "Size": 5 * 1024 * 1024},
            {"PartNumber": 2, "LastModified": T2, "ETag": '"p2"', "Size": 7, "ChecksumCRC32C": "AbC="},
        ],
        "Initiator": {"ID": "i", "DisplayName": "init"},
        "Owner": {"DisplayName": "own", "ID": "o"},
        "StorageClass": "STANDARD_IA",
    }
    assert parse("ListParts", s3xml.list_parts(resp)) == resp


def test_list_parts_defaults_and_url() -> None:
    resp = {"Bucket": "b", "Key": "a b", "UploadId": "u", "Parts": [{"PartNumber": 1, "Size": 1}]}
    body = s3xml.list_parts(resp, "url")
    parsed = parse("ListParts", body)
    assert parsed["Key"] == "a%20b"
    assert parsed["StorageClass"] == "STANDARD"
    assert parsed["Parts"] == [{"PartNumber": 1, "ETag": "", "Size": 1}]
    assert parsed["IsTruncated"] is False


# --------------------------------------------------------------------------- ListMultipartUploads


def mpu_resp(keys: list[str]) -> dict[str, Any]:
    return {
        "Bucket": "bkt",
        "KeyMarker": "km a+",
        "UploadIdMarker": "",
        "NextKeyMarker": "nk%",
        "NextUploadIdMarker": "nu",
        "Prefix": "p ",
        "Delimiter": "/",
        "MaxUploads": 1000,
        "IsTruncated": True,
        "Uploads": [
            {
                "UploadId": f"id{i}",
                "Key": k,
                "Initiated": T1,
                "StorageClass": "STANDARD",
                "Owner": {"DisplayName": "o", "ID": "oid"},
                "Initiator": {"ID": "iid", "DisplayName": "i"},
            }
            for i, k in enumerate(keys)
        ],
        "CommonPrefixes": [{"Prefix": "c d/"}],
    }


def test_list_multipart_uploads_plain() -> None:
    resp = mpu_resp(XML_SAFE)
    assert parse("ListMultipartUploads", s3xml.list_multipart_uploads(resp, None)) == resp


def test_list_multipart_uploads_url() -> None:
    from urllib.parse import unquote_plus

    resp = mpu_resp(TRICKY)
    body = s3xml.list_multipart_uploads(resp, "url")
    assert b"&#x" not in body
    parsed = parse("ListMultipartUploads", body)
    assert parsed.pop("EncodingType") == "url"
    # botocore does not decode this operation; a client decodes these fields itself.
    for name in ("KeyMarker", "NextKeyMarker", "Prefix", "Delimiter"):
        parsed[name] = unquote_plus(parsed[name])
    for up in parsed["Uploads"]:
        up["Key"] = unquote_plus(up["Key"])
    for cp in parsed["CommonPrefixes"]:
        cp["Prefix"] = unquote_plus(cp["Prefix"])
    assert parsed == resp


def test_list_multipart_uploads_default_storage_class() -> None:
    body = s3xml.list_multipart_uploads({"Bucket": "b", "Uploads": [{"Key": "k", "UploadId": "u"}]})
    parsed = parse("ListMultipartUploads", body)
    assert parsed["Uploads"] == [{"Key": "k", "UploadId": "u", "StorageClass": "STANDARD"}]


# --------------------------------------------------------------------------- DeleteResult


def test_delete_result() -> None:
    deleted: list[dict[str, Any]] = [
        {"Key": "a b"},
        {"Key": "v&", "VersionId": "v1", "DeleteMarker": True, "DeleteMarkerVersionId": "dm"},
    ]
    errors = [{"Key": "x", "Code": "AccessDenied", "Message": "Access Denied"}]
    body = s3xml.delete_result(deleted, errors, quiet=False)
    assert f'<DeleteResult xmlns="{NS}">'.encode() in body
    assert parse("DeleteObjects", body) == {"Deleted": deleted, "Errors": errors}
    quiet = parse("DeleteObjects", s3xml.delete_result(deleted, errors, quiet=True))
    assert quiet == {"Errors": errors}
    assert parse("DeleteObjects", s3xml.delete_result([], [], quiet=True)) == {}


# --------------------------------------------------------------------------- parse_complete_multipart


def serialize(op: str, params: dict[str, Any]) -> bytes:
    req = create_serializer("rest-xml").serialize_to_request(params, MODEL.operation_model(op))
    body = req["body"]
    assert isinstance(body, bytes)
    return body


def test_parse_complete_from_botocore() -> None:
    body = serialize(
        "CompleteMultipartUpload",
        {
            "Bucket": "b",
            "Key": "k",
            "UploadId": "u",
            "MultipartUpload": {
                "Parts": [
                    {"PartNumber": 1, "ETag": '"e1"', "ChecksumCRC32": "AAAAAA=="},
                    {"PartNumber": 2, "ETag": "e2"},
                ]
            },
        },
    )
    assert NS.encode() in body
    parts = s3xml.parse_complete_multipart(body)
    assert parts == [
        CompletedPart(1, "e1", {"ChecksumCRC32": "AAAAAA=="}),
        CompletedPart(2, "e2", {}),
    ]
    assert s3xml.is_ascending(parts)


def test_parse_complete_unnamespaced_and_pretty() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload>
  <Part>
    <PartNumber> 3 </PartNumber>
    <ETag>&quot;abc-1&quot;</ETag>
    <ChecksumSHA256>x+/=</ChecksumSHA256>
    <ChecksumCRC32C>y</ChecksumCRC32C>
  </Part>
  <Part><ETag>"d"</ETag><PartNumber>1</PartNumber></Part>
</CompleteMultipartUpload>"""
    parts = s3xml.parse_complete_multipart(body)
    assert parts == [
        CompletedPart(3, "abc-1", {"ChecksumSHA256": "x+/=", "ChecksumCRC32C": "y"}),
        CompletedPart(1, "d"),
    ]
    assert not s3xml.is_ascending(parts)
    assert not s3xml.is_ascending([CompletedPart(1, "a"), CompletedPart(1, "b")])
    assert s3xml.is_ascending([])


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&lol2;</ETag></Part>
</CompleteMultipartUpload>"""

XXE = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&x;</Key></Object></Delete>"""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not xml",
        b"<CompleteMultipartUpload>",
        b"<CompleteMultipartUpload></CompleteMultipartUpload>",
        b"<Other><Part><PartNumber>1</PartNumber><ETag>e</ETag></Part></Other>",
        b"<CompleteMultipartUpload><Part><ETag>e</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>\xd9\xa1</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><PartNumber>2</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>e</ETag><Bogus/></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag><x/></ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Stray/></CompleteMultipartUpload>",
        b'<CompleteMultipartUpload xmlns="urn:other">'
        b"<Part><PartNumber>1</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
        BILLION_LAUGHS,
        "<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE x []><CompleteMultipartUpload/>".encode("utf-16"),
        b"<CompleteMultipartUpload>" + b"<a>" * 100 + b"</a>" * 100 + b"</CompleteMultipartUpload>",
    ],
)
def test_parse_complete_malformed(body: bytes) -> None:
    with pytest.raises(MalformedXMLError):
        s3xml.parse_complete_multipart(body)


def test_parse_complete_limits() -> None:
    part = b"<Part><PartNumber>1</PartNumber><ETag>e</ETag></Part>"
    with pytest.raises(MalformedXMLError, match="larger than"):
        s3xml.parse_complete_multipart(
            b"<CompleteMultipartUpload>" + b" " * 100 + b"</CompleteMultipartUpload>", max_bytes=50
        )
    many = b"<CompleteMultipartUpload>" + part * (s3xml.MAX_PARTS + 1) + b"</CompleteMultipartUpload>"
    with pytest.raises(MalformedXMLError, match="parts"):
        s3xml.parse_complete_multipart(many)
    ok = b"<CompleteMultipartUpload>" + part * s3xml.MAX_PARTS + b"</CompleteMultipartUpload>"
    assert len(s3xml.parse_complete_multipart(ok)) == s3xml.MAX_PARTS
    with pytest.raises(ValueError):  # MalformedXMLError is a ValueError
        s3xml.parse_complete_multipart(b"<!doctype x><CompleteMultipartUpload/>")


# --------------------------------------------------------------------------- parse_delete


def test_parse_delete_from_botocore() -> None:
    # botocore writes "\r" raw, which every XML parser turns into "\n"; leave it out.
    keys = [k for k in XML_SAFE if k and "\r" not in k]
    body = serialize(
        "DeleteObjects",
        {
            "Bucket": "b",
            "Delete": {
                "Objects": [{"Key": k} for k in keys] + [{"Key": "v", "VersionId": "v1"}],
                "Quiet": True,
            },
        },
    )
    objects, quiet = s3xml.parse_delete(body)
    assert quiet is True
    assert objects == [ObjectIdentifier(k) for k in keys] + [ObjectIdentifier("v", "v1")]


def test_parse_delete_conditions_from_botocore() -> None:
    """A conditional delete's ETag, LastModifiedTime and Size, as botocore writes them."""
    when = datetime(2015, 1, 1, 12, 30, 5, tzinfo=UTC)
    objects = [
        {"Key": "e", "ETag": '"abc"'},
        {"Key": "t", "VersionId": "v", "LastModifiedTime": when},
        {"Key": "s", "Size": 0},
        {"Key": "all", "ETag": "*", "LastModifiedTime": when, "Size": 12},
    ]
    body = serialize("DeleteObjects", {"Bucket": "b", "Delete": {"Objects": objects}})
    parsed, _ = s3xml.parse_delete(body)
    assert parsed == [
        ObjectIdentifier("e", None, DeleteCondition(etag='"abc"')),
        ObjectIdentifier("t", "v", DeleteCondition(last_modified=when)),
        ObjectIdentifier("s", None, DeleteCondition(size=0)),
        ObjectIdentifier("all", None, DeleteCondition("*", when, 12)),
    ]
    assert parsed[0].condition and not DeleteCondition()
    iso = b"<Delete><Object><Key>k</Key><LastModifiedTime>2015-01-01T12:30:05Z</LastModifiedTime></Object></Delete>"
    assert s3xml.parse_delete(iso)[0][0].condition.last_modified == when


def test_parse_delete_variants() -> None:
    body = (
        b"<Delete><Object><Key> sp ace\t</Key></Object>"
        b"<Object><Key>cr&#13;lf</Key><VersionId></VersionId></Object></Delete>"
    )
    assert s3xml.parse_delete(body) == ([ObjectIdentifier(" sp ace\t"), ObjectIdentifier("cr\rlf")], False)
    ns = f'<Delete xmlns="{NS}"><Quiet> False </Quiet><Object><Key>k</Key></Object></Delete>'.encode()
    assert s3xml.parse_delete(ns) == ([ObjectIdentifier("k")], False)
    prefixed = (
        f'<s3:Delete xmlns:s3="{NS}"><s3:Quiet>TRUE</s3:Quiet><s3:Object><s3:Key>k</s3:Key></s3:Object></s3:Delete>'
    )
    assert s3xml.parse_delete(prefixed.encode()) == ([ObjectIdentifier("k")], True)


@pytest.mark.parametrize(
    "body",
    [
        b"<Delete></Delete>",
        b"<Delete><Quiet>true</Quiet></Delete>",
        b"<Delete><Quiet>yes</Quiet><Object><Key>k</Key></Object></Delete>",
        b"<Delete><Object><VersionId>v</VersionId></Object></Delete>",
        b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
        b"<Delete><Object><Key>a</Key><ETag>e</ETag><ETag>f</ETag></Object></Delete>",
        b"<Delete><Object><Key>a</Key><Size>-1</Size></Object></Delete>",
        b"<Delete><Object><Key>a</Key><LastModifiedTime>yesterday</LastModifiedTime></Object></Delete>",
        b"<Delete><Object><Key>a</Key></Object><Other/></Delete>",
        b"<Remove><Object><Key>a</Key></Object></Remove>",
        b"<Delete><Object><Key>a</Key></Object>",
        XXE,
    ],
)
def test_parse_delete_malformed(body: bytes) -> None:
    with pytest.raises(MalformedXMLError):
        s3xml.parse_delete(body)


def test_parse_delete_limits() -> None:
    obj_xml = b"<Object><Key>k</Key></Object>"
    ok = b"<Delete>" + obj_xml * s3xml.MAX_DELETE_KEYS + b"</Delete>"
    assert len(s3xml.parse_delete(ok)[0]) == s3xml.MAX_DELETE_KEYS
    with pytest.raises(MalformedXMLError, match="1000"):
        s3xml.parse_delete(b"<Delete>" + obj_xml * (s3xml.MAX_DELETE_KEYS + 1) + b"</Delete>")
    with pytest.raises(MalformedXMLError, match="larger than"):
        s3xml.parse_delete(ok, max_bytes=100)
