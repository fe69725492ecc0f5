"""AWS Signature Version 4 verification for S3 requests (header and presigned query auth).

Pure and synchronous: everything comes in as plain data (method, raw path, query, headers, a
credential lookup, the current time), so it is testable without a server. The canonical request
is built the way S3 builds it, which differs from other AWS services: the path is used exactly as
sent (no normalisation, no second encoding). All signature comparisons use
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import unquote_to_bytes

from proxy.s3.errors import S3Error

ALGORITHM: Final = "AWS4-HMAC-SHA256"
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
MAX_PRESIGNED_EXPIRES: Final = 7 * 24 * 3600
DEFAULT_MAX_SKEW_SECONDS: Final = 15 * 60

CredentialLookup = Callable[[str], "str | None"]
HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]
QueryLike = str | Sequence[tuple[str, str]]


class PayloadMode(enum.Enum):
    """What ``x-amz-content-sha256`` announced about the body, i.e. how it must be verified."""

    SHA256 = "sha256"  # a hex SHA-256 of the body: AuthResult.payload_sha256
    UNSIGNED = "UNSIGNED-PAYLOAD"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

    @property
    def streaming(self) -> bool:
        """The body is ``aws-chunked`` framed and must go through the chunk decoder."""
        return self.name.startswith("STREAMING")

    @property
    def signed_chunks(self) -> bool:
        """Every chunk carries a signature chained from the seed signature."""
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def has_trailer(self) -> bool:
        """Trailing headers (checksums) follow the last chunk."""
        return self in (
            PayloadMode.STREAMING_UNSIGNED_TRAILER,
            PayloadMode.STREAMING_SIGNED_TRAILER,
        )


_SPECIAL_PAYLOADS: Final = {m.value: m for m in PayloadMode if m is not PayloadMode.SHA256}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


@dataclass(frozen=True)
class AuthResult:
    """A verified request: who signed it and what the body verification needs."""

    access_key_id: str
    payload_mode: PayloadMode
    payload_sha256: str | None  # lowercase hex, only for PayloadMode.SHA256
    seed_signature: str
    signing_key: bytes = field(repr=False)
    scope: str  # yyyymmdd/region/s3/aws4_request
    amz_date: str  # yyyymmddThhmmssZ
    region: str
    signed_headers: tuple[str, ...]
    presigned: bool = False

    @property
    def payload_value(self) -> str:
        """The ``x-amz-content-sha256`` value as it appeared in the canonical request."""
        if self.payload_mode is PayloadMode.SHA256:
            return self.payload_sha256 or ""
        return self.payload_mode.value


# --------------------------------------------------------------------------------------------
# Building blocks (also used by the aws-chunked decoder and by tests)
# --------------------------------------------------------------------------------------------

_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ENCODE_TABLE: Final = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))
_ENCODE_TABLE_SLASH: Final = tuple("/" if b == 0x2F else _ENCODE_TABLE[b] for b in range(256))


def uri_encode(value: bytes | str, keep_slash: bool = False) -> str:
    """S3's URI encoding: unreserved characters as is, every other byte as ``%XX`` uppercase."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    table = _ENCODE_TABLE_SLASH if keep_slash else _ENCODE_TABLE
    return "".join([table[b] for b in raw])


@functools.lru_cache(maxsize=128)
def derive_signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """kSigning = HMAC chain over date, region, service and ``aws4_request`` (cached per day)."""
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("utf-8"), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode("utf-8"), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def sign(signing_key: bytes, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 signature of a string to sign."""
    return hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def signatures_equal(expected: str, provided: str) -> bool:
    """Constant-time comparison of two hex signatures (case of ``provided`` ignored)."""
    return hmac.compare_digest(expected.encode("ascii"), provided.lower().encode("ascii", "replace"))


def canonical_query(pairs: Iterable[tuple[bytes, bytes]]) -> str:
    """Query pairs (decoded bytes) encoded, sorted by encoded key then value, joined with ``&``."""
    encoded = sorted((uri_encode(k), uri_encode(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def collect_headers(headers: HeadersLike) -> dict[str, list[str]]:
    """Lowercased name -> every value, in order (handles multidicts and repeated headers)."""
    items: Iterable[tuple[str, str]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, list[str]] = {}
    for name, value in items:
        out.setdefault(name.lower(), []).append(value)
    return out


def canonical_header_value(values: Sequence[str]) -> str:
    """Each value trimmed with inner whitespace runs collapsed; repeated headers joined by ``,``."""
    return ",".join(" ".join(v.split()) for v in values)


def canonical_request(
    method: str,
    canonical_uri: str,
    canonical_query_string: str,
    headers: Mapping[str, Sequence[str]],
    signed_headers: Sequence[str],
    payload_value: str,
) -> str:
    """The SigV4 canonical request; ``headers`` maps lowercase names to their values."""
    header_lines = "".join(f"{name}:{canonical_header_value(headers.get(name, ()))}\n" for name in signed_headers)
    return "\n".join(
        [
            method.upper(),
            canonical_uri,
            canonical_query_string,
            header_lines,
            ";".join(signed_headers),
            payload_value,
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """``AWS4-HMAC-SHA256`` string to sign for a canonical request."""
    # surrogateescape: header bytes that are not UTF-8 (decoded so by aiohttp) are signed as sent.
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def verify_payload_sha256(expected_hex: str, actual_digest: bytes | str) -> None:
    """Compare the announced ``x-amz-content-sha256`` with the body's digest (raw or hex)."""
    actual_hex = actual_digest if isinstance(actual_digest, str) else actual_digest.hex()
    if not hmac.compare_digest(expected_hex.lower().encode("ascii", "replace"), actual_hex.lower().encode("ascii")):
        raise S3Error.of(
            "XAmzContentSHA256Mismatch",
            ClientComputedContentSHA256=expected_hex,
            S3ComputedContentSHA256=actual_hex,
        )


# --------------------------------------------------------------------------------------------
# Request verification
# --------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    amz_date: str


def _malformed_auth(detail: str, region: str | None = None) -> S3Error:
    extra = {"Region": region} if region else {}
    return S3Error.of("AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}", **extra)


def _query_error(message: str) -> S3Error:
    return S3Error.of("AuthorizationQueryParametersError", message)


def _parse_query(query: QueryLike) -> list[tuple[bytes, bytes]]:
    """Query as decoded byte pairs; a raw string is split on ``&`` and percent-decoded."""
    if isinstance(query, str):
        pairs: list[tuple[bytes, bytes]] = []
        for part in query.split("&"):
            if not part:
                continue
            key, _, value = part.partition("=")
            pairs.append((unquote_to_bytes(key), unquote_to_bytes(value)))
        return pairs
    return [(k.encode("utf-8"), v.encode("utf-8")) for k, v in query]


def _parse_credential(credential: str, malformed: Callable[[str], S3Error]) -> list[str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise malformed('the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    _akid, date, region, service, terminator = parts
    if not re.fullmatch(r"\d{8}", date):
        raise malformed(
            f'incorrect date format "{date}". This date in the credential must be in the format "yyyyMMdd".'
        )
    if not region:
        raise malformed("the region is empty.")
    if service != "s3":
        raise malformed(f'incorrect service "{service}". This endpoint belongs to "s3".')
    if terminator != "aws4_request":
        raise malformed(f'incorrect terminal "{terminator}". This endpoint uses "aws4_request".')
    return parts


def _parse_signed_headers(value: str, malformed: Callable[[str], S3Error]) -> list[str]:
    names = value.split(";")
    if not value or any(not n or n != n.lower() or n != n.strip() for n in names):
        raise malformed("the SignedHeaders are mal-formed.")
    return names


def _parse_authorization(header: str, headers: Mapping[str, list[str]]) -> _Parsed:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS" or algorithm.startswith("AWS4-"):
            raise S3Error.invalid_request(
                "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
            )
        raise S3Error.invalid_argument("Unsupported Authorization Type", "Authorization", header)
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, eq, value = component.strip().partition("=")
        if not eq or name in fields:
            raise _malformed_auth(f'the component "{component.strip()}" is mal-formed.')
        fields[name] = value.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise _malformed_auth(f"missing {required}.")
    akid, date, region, service, _ = _parse_credential(fields["Credential"], _malformed_auth)
    signed = _parse_signed_headers(fields["SignedHeaders"], _malformed_auth)
    amz_date = _request_amz_date(headers)
    return _Parsed(akid, date, region, service, signed, fields["Signature"], amz_date)


def _request_amz_date(headers: Mapping[str, list[str]]) -> str:
    """``x-amz-date`` (or ``Date``) as ``yyyymmddThhmmssZ``; S3 answers AccessDenied without."""
    if "x-amz-date" in headers:
        value = headers["x-amz-date"][0].strip()
        if not _AMZ_DATE.fullmatch(value):
            raise S3Error.access_denied("AWS authentication requires a valid Date or x-amz-date header")
        return value
    if "date" in headers:
        try:
            parsed = parsedate_to_datetime(headers["date"][0])
        except (TypeError, ValueError):
            parsed = None
        if parsed is None:
            raise S3Error.access_denied("AWS authentication requires a valid Date or x-amz-date header")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    raise S3Error.access_denied("AWS authentication requires a valid Date or x-amz-date header")


_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")


def _parse_amz_date(value: str) -> datetime:
    """``YYYYMMDDTHHMMSSZ`` (strptime is a tenth of a millisecond, on every request); ValueError."""
    match = _AMZ_DATE.fullmatch(value)
    if match is None:
        raise ValueError(f"not an x-amz-date: {value!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_presigned(params: dict[str, str]) -> tuple[_Parsed, int]:
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise _query_error('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    for name in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires"):
        if name not in params:
            raise _query_error(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
                "X-Amz-Expires parameters."
            )
    akid, date, region, service, _ = _parse_credential(
        params["X-Amz-Credential"], lambda d: _query_error(f"Error parsing the X-Amz-Credential parameter; {d}")
    )
    amz_date = params["X-Amz-Date"]
    if not _AMZ_DATE.fullmatch(amz_date):
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    expires_raw = params["X-Amz-Expires"]
    if not expires_raw.isdigit():
        raise _query_error("X-Amz-Expires should be a number")
    expires = int(expires_raw)
    if expires > MAX_PRESIGNED_EXPIRES:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds) that is 604800")
    signed = _parse_signed_headers(
        params["X-Amz-SignedHeaders"], lambda d: _query_error(f"Error parsing the X-Amz-SignedHeaders parameter; {d}")
    )
    parsed = _Parsed(akid, date, region, service, signed, params["X-Amz-Signature"], amz_date)
    return parsed, expires


def _payload_mode(value: str) -> tuple[PayloadMode, str | None]:
    if value in _SPECIAL_PAYLOADS:
        return _SPECIAL_PAYLOADS[value], None
    if _HEX64.fullmatch(value):
        return PayloadMode.SHA256, value.lower()
    raise S3Error.invalid_argument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a "
        "valid sha256 value.",
        "x-amz-content-sha256",
        value,
    )


def _candidate_uris(raw_path: str) -> list[str]:
    """The path as sent; then, if different, S3's encoding of the decoded path.

    The first is what botocore (and S3) sign. The second covers SDKs that leave characters such
    as ``!*'()@:,$`` unencoded on the wire but encode them in the canonical request.
    """
    path = raw_path or "/"
    candidates = [path]
    reencoded = uri_encode(unquote_to_bytes(path), keep_slash=True)
    if reencoded != path:
        candidates.append(reencoded)
    return candidates


def verify_request(
    method: str,
    raw_path: str,
    query: QueryLike,
    headers: HeadersLike,
    lookup: CredentialLookup,
    now: datetime,
    max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS,
    region: str | None = None,
) -> AuthResult:
    """Verify a request's SigV4 signature and return who signed it and how to check the body.

    ``raw_path`` is the path exactly as on the wire (percent-encoded, without the query);
    ``query`` is either the raw query string (preferred: byte exact) or the decoded pairs in
    order with blank values kept. ``region``, if given, must be the scope's region; by default
    any region is accepted (clients sign with whatever region they were configured with).
    Raises :class:`S3Error` with the code S3 would answer, checking in S3's order: the
    credential, the clock, the signed headers, then the signature.
    """
    hdrs = collect_headers(headers)
    pairs = _parse_query(query)
    claim = _claim_of(hdrs, pairs)
    parsed = claim.parsed
    payload_mode, payload_sha256 = _payload_mode(claim.payload_value)
    _check_scope(parsed, region, claim.presigned)
    secret = lookup(parsed.access_key_id)
    if secret is None:
        raise S3Error.of("InvalidAccessKeyId", AWSAccessKeyId=parsed.access_key_id)
    _check_clock(claim, now if now.tzinfo is not None else now.replace(tzinfo=UTC), max_skew_seconds)
    _check_signed_headers(parsed, hdrs, claim.presigned)
    scope = f"{parsed.date}/{parsed.region}/{parsed.service}/aws4_request"
    signing_key = derive_signing_key(secret, parsed.date, parsed.region, parsed.service)
    _check_signature(method, raw_path, claim, hdrs, scope, signing_key)
    return AuthResult(
        access_key_id=parsed.access_key_id,
        payload_mode=payload_mode,
        payload_sha256=payload_sha256,
        seed_signature=parsed.signature.lower(),
        signing_key=signing_key,
        scope=scope,
        amz_date=parsed.amz_date,
        region=parsed.region,
        signed_headers=tuple(parsed.signed_headers),
        presigned=claim.presigned,
    )


@dataclass(frozen=True)
class _Claim:
    """What a request says about its signature, before any of it is checked."""

    parsed: _Parsed
    presigned: bool
    expires: int  # seconds, presigned URLs only
    payload_value: str  # x-amz-content-sha256 (or the query's), as sent
    pairs: list[tuple[bytes, bytes]]  # the query to sign (without X-Amz-Signature)


def _claim_of(hdrs: dict[str, list[str]], pairs: list[tuple[bytes, bytes]]) -> _Claim:
    """The signature a request carries: in its Authorization header or its query (presigned)."""
    params = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}
    authorization = hdrs.get("authorization")
    presigned = "X-Amz-Algorithm" in params or "X-Amz-Credential" in params
    if authorization and presigned:
        raise S3Error.invalid_argument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            "Authorization",
            authorization[0],
        )
    if presigned:
        parsed, expires = _parse_presigned(params)
        return _Claim(
            parsed,
            True,
            expires,
            params.get("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
            [(k, v) for k, v in pairs if k != b"X-Amz-Signature"],
        )
    if not authorization:
        raise S3Error.access_denied()
    if len(authorization) > 1:
        raise _malformed_auth("more than one Authorization header.")
    parsed = _parse_authorization(authorization[0], hdrs)
    if "x-amz-content-sha256" not in hdrs:
        raise S3Error.invalid_request("Missing required header for this request: x-amz-content-sha256")
    return _Claim(parsed, False, 0, hdrs["x-amz-content-sha256"][0].strip(), pairs)


def _check_scope(parsed: _Parsed, region: str | None, presigned: bool) -> None:
    """The credential scope's region (when one is required) and date (that of X-Amz-Date)."""
    if region is not None and parsed.region != region:
        raise _malformed_auth(f"the region '{parsed.region}' is wrong; expecting '{region}'", region)
    if parsed.date != parsed.amz_date[:8]:
        message = (
            f'Invalid credential date "{parsed.date}". This date is not the same as '
            'X-Amz-Date: "' + parsed.amz_date[:8] + '".'
        )
        raise _query_error(message) if presigned else _malformed_auth(message)


def _check_clock(claim: _Claim, now: datetime, max_skew_seconds: float) -> None:
    """X-Amz-Date within the allowed skew (or, presigned, the URL not expired nor early). S3
    answers these before it looks at the signature."""
    parsed = claim.parsed
    try:
        request_time = _parse_amz_date(parsed.amz_date)
    except ValueError:
        raise S3Error.access_denied("AWS authentication requires a valid Date or x-amz-date header") from None
    skew = timedelta(seconds=max_skew_seconds)
    if claim.presigned:
        if request_time - now > skew:
            raise S3Error.access_denied("Request is not valid yet")
        if now > request_time + timedelta(seconds=claim.expires):
            raise S3Error.access_denied(
                "Request has expired",
                **{
                    "X-Amz-Expires": str(claim.expires),
                    "Expires": _iso(request_time + timedelta(seconds=claim.expires)),
                    "ServerTime": _iso(now),
                },
            )
    elif abs(now - request_time) > skew:
        raise S3Error.of(
            "RequestTimeTooSkewed",
            RequestTime=parsed.amz_date,
            ServerTime=_iso(now),
            MaxAllowedSkewMilliseconds=str(int(max_skew_seconds * 1000)),
        )


def _check_signed_headers(parsed: _Parsed, hdrs: dict[str, list[str]], presigned: bool) -> None:
    """S3 requires host, and x-amz-content-sha256 for header auth, to be signed, and refuses
    x-amz-* headers that are present but unsigned (they could be added by anyone)."""
    signed_set = set(parsed.signed_headers)
    if "host" not in signed_set:
        raise S3Error.access_denied("Header 'host' must be signed", HeadersNotSigned="host")
    if not presigned and "x-amz-content-sha256" not in signed_set:
        raise S3Error.access_denied(
            "Header 'x-amz-content-sha256' must be signed",
            HeadersNotSigned="x-amz-content-sha256",
        )
    unsigned = sorted(
        name
        for name in hdrs
        if name.startswith("x-amz-") and name not in signed_set and not (presigned and name == "x-amz-content-sha256")
    )
    if unsigned:
        raise S3Error.access_denied(
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )


def _check_signature(
    method: str, raw_path: str, claim: _Claim, hdrs: dict[str, list[str]], scope: str, signing_key: bytes
) -> None:
    """The signature over the canonical request, for each spelling of the path a client may
    have signed; SignatureDoesNotMatch names the first."""
    parsed = claim.parsed
    query_string = canonical_query(claim.pairs)
    first_canonical = first_sts = ""
    for uri in _candidate_uris(raw_path):
        canonical = canonical_request(method, uri, query_string, hdrs, parsed.signed_headers, claim.payload_value)
        sts = string_to_sign(parsed.amz_date, scope, canonical)
        if not first_sts:
            first_canonical, first_sts = canonical, sts
        if signatures_equal(sign(signing_key, sts), parsed.signature):
            return
    raise S3Error.of(
        "SignatureDoesNotMatch",
        AWSAccessKeyId=parsed.access_key_id,
        StringToSign=first_sts,
        SignatureProvided=parsed.signature,
        CanonicalRequest=first_canonical,
    )
