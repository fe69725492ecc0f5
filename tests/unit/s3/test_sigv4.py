"""SigV4 verification against requests signed by botocore itself (real clients, frozen clock).

Requests are produced by a real boto3 client whose ``before-send`` hook captures the request
exactly as it would go on the wire and short-circuits the network, so the tests check
``proxy.s3.sigv4`` against what boto3 really sends, not against a re-implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import (
    AuthResult,
    PayloadMode,
    collect_headers,
    uri_encode,
    verify_payload_sha256,
    verify_request,
)

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FROZEN = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def lookup(akid: str) -> str | None:
    return SECRET if akid == AKID else None


@dataclass
class Wire:
    """A request as the proxy's HTTP layer would see it."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes

    def verify(self, now: datetime = FROZEN, **kw: Any) -> AuthResult:
        return verify_request(
            method=self.method,
            raw_path=self.raw_path,
            query=self.raw_query,
            headers=self.headers,
            lookup=kw.pop("lookup", lookup),
            now=now,
            **kw,
        )

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name.lower())

    def with_header(self, name: str, value: str) -> Wire:
        headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return Wire(self.method, self.raw_path, self.raw_query, [*headers, (name, value)], self.body)


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""

    def read(self, *_: Any, **__: Any) -> bytes:
        return b""


def _to_wire(method: str, url: str, headers: Any, body: Any) -> Wire:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    pairs = [] if any(k.lower() == "host" for k in headers) else [("Host", host)]
    for k, v in headers.items():
        pairs.append((k, v.decode() if isinstance(v, bytes) else v))
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body.read()
    return Wire(method, parts.path, parts.query, pairs, data)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN.replace(tzinfo=None))


_CLIENTS: dict[tuple[Any, ...], tuple[Any, list[Wire]]] = {}


def make_client(endpoint: str = "https://s3.example.com", style: str = "path", **config: Any) -> tuple[Any, list[Wire]]:
    """A boto3 S3 client that records requests instead of sending them (cached: clients are
    slow to build; the capture list is emptied on each call)."""
    cache_key = (endpoint, style, *sorted(config.items()))
    if cache_key in _CLIENTS:
        client, captured = _CLIENTS[cache_key]
        captured.clear()
        return client, captured
    session = boto3.session.Session(aws_access_key_id=AKID, aws_secret_access_key=SECRET, region_name="eu-west-1")
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 0}, signature_version="s3v4", **config),
    )
    captured = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        captured.append(_to_wire(request.method, request.url, request.headers, request.body))
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send.s3", before_send)
    _CLIENTS[cache_key] = (client, captured)
    return client, captured


def capture(call: Callable[[Any], Any], **client_kw: Any) -> Wire:
    client, captured = make_client(**client_kw)
    # The fake empty response may not parse; the request is captured anyway.
    with contextlib.suppress(Exception):
        call(client)
    assert captured, "no request captured"
    return captured[-1]


def presigned(method: str, params: dict[str, str], expires: int = 3600, **client_kw: Any) -> Wire:
    client, _ = make_client(**client_kw)
    url = client.generate_presigned_url(method, Params=params, ExpiresIn=expires)
    verb = {"get_object": "GET", "put_object": "PUT", "head_object": "HEAD"}[method]
    return _to_wire(verb, url, {"Host": urlsplit(url).netloc}, b"")


ODD_KEYS = [
    "plain.txt",
    "with space/and more  spaces",
    "unicode/ünïcødé/日本語",
    "plus+sign",
    "percent%20literal%",
    "tilde~and=equals&amp",
    "//double//slashes/",
    "punct!*'()@:,$;[]",
    "medusa/index/backup_index/2026-11-29/tokenmap_node1.json",
]


# ------------------------------------------------------------------------------------------
# Header auth
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest.mark.parametrize("style", ["path", "virtual"])
def test_get_odd_keys(key: str, style: str) -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key=key), style=style)
    result = wire.verify()
    assert result.access_key_id == AKID
    assert result.payload_mode is PayloadMode.SHA256
    assert result.payload_sha256 == hashlib.sha256(b"").hexdigest()
    assert result.scope == "20261129/eu-west-1/s3/aws4_request"
    assert result.amz_date == "20261129T120000Z"
    assert not result.presigned


def test_virtual_host_with_port() -> None:
    wire = capture(
        lambda c: c.head_object(Bucket="medusa-bkp", Key="a b"),
        endpoint="http://s3.local:8333",
        style="virtual",
    )
    assert wire.header("Host") == "medusa-bkp.s3.local:8333"
    wire.verify()


def test_ranged_get_with_if_match() -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k", Range="bytes=0-9", IfMatch='"abc"'))
    result = wire.verify()
    assert "range" in result.signed_headers and "if-match" in result.signed_headers


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.create_multipart_upload(Bucket="medusa-bkp", Key="big file"),
        lambda c: c.list_objects_v2(Bucket="medusa-bkp", Prefix="a/b", EncodingType="url"),
        lambda c: c.list_objects_v2(
            Bucket="medusa-bkp", Prefix="sp ace+plus=eq&amp/ü", Delimiter="/", ContinuationToken="tok+/=="
        ),
        lambda c: c.list_objects(Bucket="medusa-bkp", Marker="m~k", MaxKeys=5),
        lambda c: c.list_parts(Bucket="medusa-bkp", Key="k", UploadId="u+p/=="),
        lambda c: c.list_multipart_uploads(Bucket="medusa-bkp"),
        lambda c: c.get_bucket_location(Bucket="medusa-bkp"),
        lambda c: c.list_buckets(),
        lambda c: c.abort_multipart_upload(Bucket="medusa-bkp", Key="k", UploadId="abc"),
    ],
)
@pytest.mark.parametrize("style", ["path", "virtual"])
def test_queries(call: Callable[[Any], Any], style: str) -> None:
    wire = capture(call, style=style)
    wire.verify()
    # The decoded-pairs form gives the same result as the raw query string.
    from urllib.parse import parse_qsl

    verify_request(
        wire.method,
        wire.raw_path,
        parse_qsl(wire.raw_query, keep_blank_values=True),
        dict(wire.headers),
        lookup,
        FROZEN,
    )


def test_query_with_blank_value_is_signed_as_key_equals() -> None:
    wire = capture(lambda c: c.create_multipart_upload(Bucket="medusa-bkp", Key="k"))
    assert wire.raw_query == "uploads"
    wire.verify()


def test_put_with_sha256_payload_over_http() -> None:
    body = b"x" * 1000
    wire = capture(
        lambda c: c.put_object(Bucket="medusa-bkp", Key="k", Body=body),
        endpoint="http://s3.local:8333",
        request_checksum_calculation="when_required",
    )
    result = wire.verify()
    assert result.payload_mode is PayloadMode.SHA256
    assert result.payload_sha256 == hashlib.sha256(body).hexdigest()
    verify_payload_sha256(result.payload_sha256, hashlib.sha256(body).digest())
    with pytest.raises(S3Error) as err:
        verify_payload_sha256(result.payload_sha256, hashlib.sha256(body + b"!").digest())
    assert err.value.code == "XAmzContentSHA256Mismatch" and err.value.status == 400


def test_put_streaming_unsigned_trailer_over_https() -> None:
    wire = capture(lambda c: c.put_object(Bucket="medusa-bkp", Key="k", Body=b"hello"))
    result = wire.verify()
    assert result.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
    assert result.payload_mode.streaming and result.payload_mode.has_trailer
    assert not result.payload_mode.signed_chunks
    assert result.payload_sha256 is None


def test_put_unsigned_payload() -> None:
    wire = capture(
        lambda c: c.put_object(Bucket="medusa-bkp", Key="k", Body=b"hello", ContentMD5="XUFAKrxLKna5cZ2REBfFkg=="),
        request_checksum_calculation="when_required",
    )
    assert wire.header("X-Amz-Content-SHA256") == "UNSIGNED-PAYLOAD"
    assert wire.verify().payload_mode is PayloadMode.UNSIGNED


def test_metadata_and_whitespace_in_signed_headers() -> None:
    wire = capture(
        lambda c: c.put_object(
            Bucket="medusa-bkp",
            Key="k",
            Body=b"",
            Metadata={"note": "  two   spaces\tand tab  "},
            ContentType="text/plain",
        ),
        endpoint="http://s3.local",
    )
    wire.verify()


def test_repeated_header_values_joined_with_comma() -> None:
    request = AWSRequest("GET", "https://s3.example.com/b/k", headers={"X-Amz-Meta-A": "1"})
    S3SigV4Auth(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    wire = _to_wire("GET", request.url, request.headers, None)
    wire.verify()
    # A repeated header is canonicalised as "a,b": splitting a signed "1,2" into two headers
    # must still verify.
    request = AWSRequest("GET", "https://s3.example.com/b/k", headers={"X-Amz-Meta-A": "1,2"})
    S3SigV4Auth(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    wire = _to_wire("GET", request.url, request.headers, None)
    split = [(k, v) for k, v in wire.headers if k.lower() != "x-amz-meta-a"]
    split += [("x-amz-meta-a", "1"), ("X-Amz-Meta-A", "2")]
    Wire(wire.method, wire.raw_path, wire.raw_query, split, b"").verify()


def test_any_region_by_default_and_policy() -> None:
    wire = capture(lambda c: c.head_object(Bucket="medusa-bkp", Key="k"))
    wire.verify(region="eu-west-1")
    with pytest.raises(S3Error) as err:
        wire.verify(region="us-east-1")
    assert err.value.code == "AuthorizationHeaderMalformed"


# ------------------------------------------------------------------------------------------
# Failures
# ------------------------------------------------------------------------------------------


def _code(wire: Wire, **kw: Any) -> str:
    with pytest.raises(S3Error) as err:
        wire.verify(**kw)
    return err.value.code


def test_bad_signature() -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k"))
    auth = wire.header("Authorization")
    bad = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    with pytest.raises(S3Error) as err:
        wire.with_header("Authorization", bad).verify()
    assert err.value.code == "SignatureDoesNotMatch" and err.value.status == 403
    assert "CanonicalRequest" in err.value.extra and "StringToSign" in err.value.extra


def test_tampered_path_query_and_header() -> None:
    wire = capture(lambda c: c.list_objects_v2(Bucket="medusa-bkp", Prefix="a"))
    assert _code(Wire(wire.method, wire.raw_path + "x", wire.raw_query, wire.headers, b"")) == "SignatureDoesNotMatch"
    assert _code(Wire(wire.method, wire.raw_path, wire.raw_query + "b", wire.headers, b"")) == "SignatureDoesNotMatch"
    assert _code(Wire("DELETE", wire.raw_path, wire.raw_query, wire.headers, b"")) == "SignatureDoesNotMatch"
    assert _code(wire.with_header("Host", "other.example.com")) == "SignatureDoesNotMatch"


def test_wrong_secret() -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k"))
    assert _code(wire, lookup=lambda a: "other") == "SignatureDoesNotMatch"


def test_unknown_key() -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k"))
    with pytest.raises(S3Error) as err:
        wire.verify(lookup=lambda a: None)
    assert err.value.code == "InvalidAccessKeyId" and err.value.status == 403
    assert err.value.extra["AWSAccessKeyId"] == AKID


@pytest.mark.parametrize("minutes,ok", [(14, True), (-14, True), (16, False), (-16, False)])
def test_clock_skew(minutes: int, ok: bool) -> None:
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k"))
    now = FROZEN + timedelta(minutes=minutes)
    if ok:
        wire.verify(now=now)
    else:
        with pytest.raises(S3Error) as err:
            wire.verify(now=now)
        assert err.value.code == "RequestTimeTooSkewed" and err.value.status == 403


def test_missing_auth_is_access_denied() -> None:
    wire = Wire("GET", "/b/k", "", [("Host", "s3.example.com")], b"")
    with pytest.raises(S3Error) as err:
        wire.verify()
    assert err.value.code == "AccessDenied" and err.value.status == 403


def test_unsigned_amz_header_is_refused() -> None:
    wire = capture(lambda c: c.put_object(Bucket="medusa-bkp", Key="k", Body=b""))
    tampered = wire.with_header("x-amz-meta-added", "later")
    with pytest.raises(S3Error) as err:
        tampered.verify()
    assert err.value.code == "AccessDenied"
    assert err.value.extra["HeadersNotSigned"] == "x-amz-meta-added"


def test_content_sha256_must_be_signed() -> None:
    request = AWSRequest("GET", "https://s3.example.com/b/k", headers={})
    SigV4Auth(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(request)
    wire = _to_wire("GET", request.url, request.headers, None)
    assert _code(wire) == "InvalidRequest"  # header missing altogether
    wire = wire.with_header("x-amz-content-sha256", hashlib.sha256(b"").hexdigest())
    assert _code(wire) == "AccessDenied"  # present but not signed


def test_sigv2_and_garbage_authorization() -> None:
    base = Wire("GET", "/b/k", "", [("Host", "h"), ("Date", "Sun, 29 Nov 2026 12:00:00 GMT")], b"")
    assert _code(base.with_header("Authorization", "AWS AKID:c2ln")) == "InvalidRequest"
    assert _code(base.with_header("Authorization", "Bearer x")) == "InvalidArgument"
    wire = capture(lambda c: c.get_object(Bucket="medusa-bkp", Key="k"))
    auth = wire.header("Authorization")
    assert _code(wire.with_header("Authorization", auth.replace("/s3/", "/ec2/"))) == "AuthorizationHeaderMalformed"
    assert _code(wire.with_header("Authorization", auth.split(", Signature")[0])) == "AuthorizationHeaderMalformed"
    assert (
        _code(wire.with_header("Authorization", auth.replace("20261129/", "20261128/")))
        == "AuthorizationHeaderMalformed"
    )
    assert _code(wire.with_header("x-amz-content-sha256", "nonsense")) == "InvalidArgument"


def _hand_signed(canonical: str, amz_date: str = "20261129T120000Z") -> str:
    """Independent SigV4 signing of a hand-written canonical request (AWS documentation)."""
    import hmac

    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    sts = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + hashlib.sha256(canonical.encode()).hexdigest()
    key = ("AWS4" + SECRET).encode()
    for part in (amz_date[:8], "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={AKID}/{scope},SignedHeaders="
        + canonical.split("\n")[-2]
        + f",Signature={signature}"
    )


def test_date_header_instead_of_x_amz_date() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    canonical = (
        "GET\n/b/k\n\ndate:Sun, 29 Nov 2026 12:00:00 GMT\nhost:h\n"
        f"x-amz-content-sha256:{empty}\n\ndate;host;x-amz-content-sha256\n{empty}"
    )
    headers = [
        ("Host", "h"),
        ("Date", "Sun, 29 Nov 2026 12:00:00 GMT"),
        ("x-amz-content-sha256", empty),
        ("Authorization", _hand_signed(canonical)),
    ]
    wire = Wire("GET", "/b/k", "", headers, b"")
    assert wire.verify().amz_date == "20261129T120000Z"
    assert _code(wire, now=FROZEN + timedelta(minutes=20)) == "RequestTimeTooSkewed"
    no_date = Wire("GET", "/b/k", "", [h for h in headers if h[0] != "Date"], b"")
    assert _code(no_date) == "AccessDenied"


def test_path_left_unencoded_on_the_wire_but_encoded_in_signature() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    canonical = (
        "GET\n/b/a%21b%28c%29\n\nhost:h\n"
        f"x-amz-content-sha256:{empty}\nx-amz-date:20261129T120000Z\n\n"
        f"host;x-amz-content-sha256;x-amz-date\n{empty}"
    )
    headers = [
        ("Host", "h"),
        ("x-amz-date", "20261129T120000Z"),
        ("x-amz-content-sha256", empty),
        ("Authorization", _hand_signed(canonical)),
    ]
    Wire("GET", "/b/a!b(c)", "", headers, b"").verify()
    Wire("GET", "/b/a%21b%28c%29", "", headers, b"").verify()
    assert _code(Wire("GET", "/b/a!b(c)x", "", headers, b"")) == "SignatureDoesNotMatch"


# ------------------------------------------------------------------------------------------
# Presigned URLs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest.mark.parametrize("method", ["get_object", "put_object", "head_object"])
def test_presigned(method: str, key: str) -> None:
    wire = presigned(method, {"Bucket": "medusa-bkp", "Key": key})
    result = wire.verify()
    assert result.presigned and result.payload_mode is PayloadMode.UNSIGNED
    assert result.access_key_id == AKID


def test_presigned_virtual_host() -> None:
    wire = presigned("get_object", {"Bucket": "medusa-bkp", "Key": "a b"}, style="virtual")
    assert wire.header("Host").startswith("medusa-bkp.")
    wire.verify()


def test_presigned_expiry() -> None:
    wire = presigned("get_object", {"Bucket": "medusa-bkp", "Key": "k"}, expires=600)
    wire.verify(now=FROZEN + timedelta(seconds=599))
    with pytest.raises(S3Error) as err:
        wire.verify(now=FROZEN + timedelta(seconds=601))
    assert err.value.code == "AccessDenied" and err.value.message == "Request has expired"
    # Future-dated beyond the skew is not valid yet.
    assert _code(wire, now=FROZEN - timedelta(minutes=16)) == "AccessDenied"


def test_presigned_expires_limit() -> None:
    wire = presigned("get_object", {"Bucket": "medusa-bkp", "Key": "k"}, expires=604800)
    wire.verify()
    wire = presigned("get_object", {"Bucket": "medusa-bkp", "Key": "k"}, expires=604801)
    assert _code(wire) == "AuthorizationQueryParametersError"


def test_presigned_tampered() -> None:
    wire = presigned("get_object", {"Bucket": "medusa-bkp", "Key": "k"})
    assert _code(Wire(wire.method, wire.raw_path + "2", wire.raw_query, wire.headers, b"")) == "SignatureDoesNotMatch"
    assert _code(Wire("PUT", wire.raw_path, wire.raw_query, wire.headers, b"")) == "SignatureDoesNotMatch"
    assert _code(wire, lookup=lambda a: None) == "InvalidAccessKeyId"
    both = wire.with_header("Authorization", "AWS4-HMAC-SHA256 Credential=x")
    assert _code(both) == "InvalidArgument"
    missing = Wire(
        wire.method,
        wire.raw_path,
        "&".join(p for p in wire.raw_query.split("&") if "Expires" not in p),
        wire.headers,
        b"",
    )
    assert _code(missing) == "AuthorizationQueryParametersError"


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------


def test_uri_encode() -> None:
    assert uri_encode("a b+c/ü~") == "a%20b%2Bc%2F%C3%BC~"
    assert uri_encode("a b/c", keep_slash=True) == "a%20b/c"


def test_collect_headers_multidict_like() -> None:
    headers = collect_headers([("A", "1"), ("a", "2"), ("B", "x")])
    assert headers == {"a": ["1", "2"], "b": ["x"]}


def test_error_xml() -> None:
    err = S3Error.of("SignatureDoesNotMatch", resource="/b/k&", StringToSign="a<b")
    xml = err.to_xml("REQ1")
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch')
    assert b"<StringToSign>a&lt;b</StringToSign>" in xml
    assert b"<Resource>/b/k&amp;</Resource><RequestId>REQ1</RequestId></Error>" in xml
    assert S3Error.of("NoSuchKey").status == 404
    assert S3Error("InvalidRange", "x", 416, extra={"ActualObjectSize": "3"}).status == 416
    with pytest.raises(ValueError):
        S3Error.of("NoSuchThing")
