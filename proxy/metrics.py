"""Prometheus metrics for the proxy.

`Metrics` owns its own `CollectorRegistry` (never the global one), so tests and several
apps in one process do not clash. Callers use the small helper methods below and never
touch label plumbing. Every series is prefixed `medusa_crypt_proxy_`; the operators'
list of series with their meaning is in docs/OPERATIONS.md.

Nothing here ever receives key material: `set_build_info` takes key *ids* only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

PREFIX = "medusa_crypt_proxy"

# Request durations span a HEAD on loopback (~1 ms) to a multi-GiB part or GET (minutes).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

UpstreamOutcome = Literal["ok", "error", "retry"]
# tampered: a record, trailer or MAC failed; truncated: the object ends early; wrong-object: written
# under another name; unknown-key: a key id the proxy lacks; unexpected-plaintext: not ours and
# not declared legacy; manifest: a manifest whose MAC is missing or wrong; seed-mismatch: an object
# of the old in-Medusa encryption that disagrees with its manifest.
# upstream_connect: no connection within connect_timeout; upstream_read: silence for read_timeout
# (nothing received, or a streamed body not taken); upstream_deadline: a call without a streamed
# body not finished within request_timeout; client_header: a request head not complete within
# header_timeout; client_body: no request body byte for body_timeout; client_send: a response not
# read by its client for body_timeout; client_idle: a connection idle for keepalive_timeout.
TimeoutKind = Literal[
    "upstream_connect",
    "upstream_read",
    "upstream_deadline",
    "client_header",
    "client_body",
    "client_send",
    "client_idle",
]
TIMEOUT_KINDS: tuple[TimeoutKind, ...] = get_args(TimeoutKind)
IntegrityKind = Literal[
    "tampered",
    "truncated",
    "wrong-object",
    "unknown-key",
    "unexpected-plaintext",
    "manifest",
    "seed-mismatch",
]
INTEGRITY_KINDS: tuple[IntegrityKind, ...] = get_args(IntegrityKind)
# Requests the daemon answers 503 at once, before any work: overload (SlowDown, above
# limits.max_concurrent_requests) and draining (ServiceUnavailable while shutting down).
RejectReason = Literal["overload", "draining"]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


class Metrics:
    """All series of one proxy instance, in a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # prometheus_client appends `_total` to counters itself; names below omit it.
        self.s3_requests = Counter(
            _name("s3_requests"),
            "S3 requests answered to clients, by operation and HTTP status.",
            ["operation", "status"],
            registry=r,
        )
        self.s3_request_duration = Histogram(
            _name("s3_request_duration_seconds"),
            "Time from request received to response finished, by S3 operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.client_bytes_received = Counter(
            _name("client_bytes_received"),
            "Body bytes received from clients (as sent, on the wire).",
            registry=r,
        )
        self.client_bytes_sent = Counter(
            _name("client_bytes_sent"),
            "Body bytes sent to clients.",
            registry=r,
        )
        self.upstream_bytes_sent = Counter(
            _name("upstream_bytes_sent"),
            "Body bytes sent to the upstream bucket.",
            registry=r,
        )
        self.upstream_bytes_received = Counter(
            _name("upstream_bytes_received"),
            "Body bytes received from the upstream bucket.",
            registry=r,
        )
        self.upstream_requests = Counter(
            _name("upstream_requests"),
            "Requests made to the upstream bucket, by operation and outcome (ok, error, retry).",
            ["operation", "outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            _name("upstream_errors"),
            "Errors returned by the upstream bucket or its connection, by S3 error code.",
            ["code"],
            registry=r,
        )
        self.bytes_encrypted = Counter(
            _name("bytes_encrypted"),
            "Plaintext bytes encrypted.",
            registry=r,
        )
        self.bytes_decrypted = Counter(
            _name("bytes_decrypted"),
            "Plaintext bytes produced by decryption.",
            registry=r,
        )
        self.integrity_failures = Counter(
            _name("integrity_failures"),
            "Objects refused because decryption or an integrity check failed, by kind.",
            ["kind"],
            registry=r,
        )
        self.cache_lookups = Counter(
            _name("cache_lookups"),
            "Metadata cache lookups, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.cache_entries = Gauge(
            _name("cache_entries"),
            "Entries in the local metadata cache.",
            registry=r,
        )
        self.requests_in_flight = Gauge(
            _name("requests_in_flight"),
            "Client requests being served now.",
            registry=r,
        )
        self.multipart_uploads_in_flight = Gauge(
            _name("multipart_uploads_in_flight"),
            "Multipart uploads started through this proxy and not yet completed or aborted.",
            registry=r,
        )
        self.build_info = Gauge(
            _name("build_info"),
            "Always 1; labels give the proxy version and the key ids in use (primary first).",
            ["version", "key_ids"],
            registry=r,
        )
        self.kms_requests = Counter(
            _name("kms_requests"),
            "Requests to the key service (KMS), by operation (GenerateDataKey, Decrypt) and outcome (ok, error).",
            ["operation", "outcome"],
            registry=r,
        )
        self.data_key_cache = Counter(
            _name("data_key_cache_lookups"),
            "Lookups of unwrapped data keys in memory, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.timeouts = Counter(
            _name("timeouts"),
            "Waits cut by a timeout, by kind (upstream_connect, upstream_read, upstream_deadline, "
            "client_header, client_body, client_send, client_idle).",
            ["kind"],
            registry=r,
        )
        self.requests_rejected = Counter(
            _name("requests_rejected"),
            "Requests answered 503 at once, by reason: overload (SlowDown, above "
            "limits.max_concurrent_requests) or draining (ServiceUnavailable while shutting down).",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            _name("ready"),
            "1 when the last readiness check passed (config and keys loaded, the upstream answered, not "
            "draining), else 0; checked by GET /readyz, and by a scrape when no check ran for a while.",
            registry=r,
        )
        # The process's CPU, memory, file descriptors and start time (Linux /proc; nothing elsewhere),
        # under the proxy's prefix like every series: medusa_crypt_proxy_process_*.
        ProcessCollector(namespace=PREFIX, registry=r)
        # Every label value known in advance is exported from the start, at 0: a first increase is
        # then seen by increase() and rate(), and a dashboard or alert has a series to read.
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result)
            self.data_key_cache.labels(result=result)
        for kind in TIMEOUT_KINDS:
            self.timeouts.labels(kind=kind)
        for integrity in INTEGRITY_KINDS:
            self.integrity_failures.labels(kind=integrity)
        for reason in REJECT_REASONS:
            self.requests_rejected.labels(reason=reason)

    # -- client side ---------------------------------------------------------------------------

    def observe_request(self, operation: str, status: int, seconds: float) -> None:
        """Count one answered S3 request and record its duration."""
        self.s3_requests.labels(operation=operation, status=str(status)).inc()
        self.s3_request_duration.labels(operation=operation).observe(max(seconds, 0.0))

    def add_client_bytes(self, received: int = 0, sent: int = 0) -> None:
        if received > 0:
            self.client_bytes_received.inc(received)
        if sent > 0:
            self.client_bytes_sent.inc(sent)

    def request_started(self) -> None:
        self.requests_in_flight.inc()

    def request_finished(self) -> None:
        self.requests_in_flight.dec()

    def request_rejected(self, reason: RejectReason) -> None:
        """Count one request answered 503 before any work (see ``RejectReason``)."""
        self.requests_rejected.labels(reason=reason).inc()

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    # -- upstream side -------------------------------------------------------------------------

    def add_upstream_bytes(self, sent: int = 0, received: int = 0) -> None:
        if sent > 0:
            self.upstream_bytes_sent.inc(sent)
        if received > 0:
            self.upstream_bytes_received.inc(received)

    def observe_upstream(self, operation: str, outcome: UpstreamOutcome, error_code: str | None = None) -> None:
        """Count one upstream call; `error_code` (e.g. `NoSuchKey`, `Timeout`) for failures."""
        self.upstream_requests.labels(operation=operation, outcome=outcome).inc()
        if error_code is not None:
            self.upstream_errors.labels(code=error_code).inc()

    def observe_kms(self, operation: str, outcome: str) -> None:
        self.kms_requests.labels(operation=operation, outcome=outcome).inc()

    def data_key_lookup(self, hit: bool) -> None:
        self.data_key_cache.labels(result="hit" if hit else "miss").inc()

    def timeout(self, kind: TimeoutKind) -> None:
        """Count one wait cut by a timeout (see ``TimeoutKind``)."""
        self.timeouts.labels(kind=kind).inc()

    # -- crypto --------------------------------------------------------------------------------

    def add_encrypted(self, nbytes: int) -> None:
        if nbytes > 0:
            self.bytes_encrypted.inc(nbytes)

    def add_decrypted(self, nbytes: int) -> None:
        if nbytes > 0:
            self.bytes_decrypted.inc(nbytes)

    def integrity_failure(self, kind: IntegrityKind) -> None:
        self.integrity_failures.labels(kind=kind).inc()

    # -- cache ---------------------------------------------------------------------------------

    def cache_lookup(self, hit: bool) -> None:
        self.cache_lookups.labels(result="hit" if hit else "miss").inc()

    def set_cache_entries(self, n: int) -> None:
        self.cache_entries.set(n)

    # -- multipart -----------------------------------------------------------------------------

    def multipart_started(self) -> None:
        self.multipart_uploads_in_flight.inc()

    def multipart_finished(self) -> None:
        """Call on Complete or Abort of an upload this process saw start."""
        if self._gauge_value(self.multipart_uploads_in_flight) > 0:
            self.multipart_uploads_in_flight.dec()

    # -- build info ----------------------------------------------------------------------------

    def set_build_info(self, version: str, key_ids: Iterable[str]) -> None:
        """(Re)set build info; call again after a key reload. Takes key ids, never keys."""
        self.build_info.clear()
        self.build_info.labels(version=version, key_ids=",".join(key_ids)).set(1)

    # -- exposition ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """Body and Content-Type for `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def _gauge_value(g: Gauge) -> float:
        for metric in g.collect():
            for sample in metric.samples:
                return float(sample.value)
        return 0.0
