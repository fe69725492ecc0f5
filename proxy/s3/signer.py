"""SigV4 for the proxy's own upstream requests on the hot paths that skip botocore.

botocore builds, signs and parses every request through its generic machinery: about 1-3 ms of
CPU each, which is what a cold listing of thousands of objects or a 4 KiB HEAD spends its time
on. These requests are few in kind (GET, HEAD and LIST on a path-style endpoint), so they are
signed here with the same primitives that verify the clients' signatures, and the signing key is
derived once a day.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from yarl import URL

from proxy.s3.sigv4 import (
    ALGORITHM,
    canonical_query,
    canonical_request,
    derive_signing_key,
    sign,
    string_to_sign,
    uri_encode,
)

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class SignedRequest:
    url: URL  # already encoded: send it as is
    headers: dict[str, str]


def object_path(bucket: str, key: str | None = None) -> str:
    """The path-style path of a bucket or object, encoded as S3 signs it (once, ``/`` kept)."""
    path = "/" + uri_encode(bucket)
    return path if key is None else f"{path}/{uri_encode(key, keep_slash=True)}"


def _host(endpoint: URL) -> str:
    host = endpoint.raw_host or ""
    if endpoint.explicit_port is not None and not endpoint.is_default_port():
        host = f"{host}:{endpoint.port}"
    return host


def sign_request(
    method: str,
    endpoint: URL,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    now: datetime | None = None,
) -> SignedRequest:
    """Sign a request without a body (the payload is ``UNSIGNED-PAYLOAD``); every given header
    and ``host`` are signed."""
    moment = now or datetime.now(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    all_headers = {name.lower(): value for name, value in headers.items()}
    all_headers["host"] = _host(endpoint)
    all_headers["x-amz-date"] = amz_date
    all_headers["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
    if credentials.token:
        all_headers["x-amz-security-token"] = credentials.token
    names = sorted(all_headers)
    query_string = canonical_query((k.encode(), v.encode()) for k, v in query)
    canonical = canonical_request(
        method, path, query_string, {n: [all_headers[n]] for n in names}, names, UNSIGNED_PAYLOAD
    )
    scope = f"{date}/{region}/s3/aws4_request"
    signature = sign(
        derive_signing_key(credentials.secret_key, date, region), string_to_sign(amz_date, scope, canonical)
    )
    all_headers["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    del all_headers["host"]  # the HTTP client writes it from the URL
    base = str(endpoint).rstrip("/")
    url = URL(f"{base}{path}" + (f"?{query_string}" if query_string else ""), encoded=True)
    return SignedRequest(url, all_headers)
