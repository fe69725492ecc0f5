"""Unit tests for proxy.metrics: series exist, move, and parse as Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import INTEGRITY_KINDS, REJECT_REASONS, Metrics

P = "medusa_crypt_proxy_"


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_all_series_present_and_prefixed() -> None:
    m = Metrics()
    m.set_build_info("1.2.3", ["k2", "k1"])
    names = {fam.name for fam in text_string_to_metric_families(m.render()[0].decode())}
    expected = {
        "s3_requests",
        "s3_request_duration_seconds",
        "client_bytes_received",
        "client_bytes_sent",
        "upstream_bytes_sent",
        "upstream_bytes_received",
        "upstream_requests",
        "upstream_errors",
        "bytes_encrypted",
        "bytes_decrypted",
        "integrity_failures",
        "cache_lookups",
        "cache_entries",
        "requests_in_flight",
        "multipart_uploads_in_flight",
        "build_info",
        "timeouts",
        "requests_rejected",
        "ready",
    }
    assert {P + n for n in expected} <= names
    assert all(n.startswith(P) for n in names)


def test_values_move() -> None:
    m = Metrics()
    m.observe_request("GetObject", 200, 0.02)
    m.observe_request("GetObject", 200, 0.5)
    m.observe_request("PutObject", 403, 0.001)
    m.add_client_bytes(received=100, sent=7)
    m.add_upstream_bytes(sent=173, received=9)
    m.observe_upstream("PutObject", "ok")
    m.observe_upstream("GetObject", "error", "NoSuchKey")
    m.observe_upstream("GetObject", "retry", "SlowDown")
    m.add_encrypted(100)
    m.add_decrypted(50)
    m.integrity_failure("trailer_invalid")
    m.cache_lookup(True)
    m.cache_lookup(False)
    m.cache_lookup(False)
    m.set_cache_entries(42)
    m.request_started()
    m.request_started()
    m.request_finished()
    m.multipart_started()
    s = samples(m)
    assert s[(P + "s3_requests_total", (("operation", "GetObject"), ("status", "200")))] == 2
    assert s[(P + "s3_requests_total", (("operation", "PutObject"), ("status", "403")))] == 1
    assert s[(P + "s3_request_duration_seconds_count", (("operation", "GetObject"),))] == 2
    assert abs(s[(P + "s3_request_duration_seconds_sum", (("operation", "GetObject"),))] - 0.52) < 1e-9
    assert s[(P + "s3_request_duration_seconds_bucket", (("le", "0.025"), ("operation", "GetObject")))] == 1
    assert s[(P + "client_bytes_received_total", ())] == 100
    assert s[(P + "client_bytes_sent_total", ())] == 7
    assert s[(P + "upstream_bytes_sent_total", ())] == 173
    assert s[(P + "upstream_bytes_received_total", ())] == 9
    assert s[(P + "upstream_requests_total", (("operation", "GetObject"), ("outcome", "error")))] == 1
    assert s[(P + "upstream_requests_total", (("operation", "GetObject"), ("outcome", "retry")))] == 1
    assert s[(P + "upstream_errors_total", (("code", "NoSuchKey"),))] == 1
    assert s[(P + "upstream_errors_total", (("code", "SlowDown"),))] == 1
    assert s[(P + "bytes_encrypted_total", ())] == 100
    assert s[(P + "bytes_decrypted_total", ())] == 50
    assert s[(P + "integrity_failures_total", (("kind", "trailer_invalid"),))] == 1
    assert s[(P + "cache_lookups_total", (("result", "hit"),))] == 1
    assert s[(P + "cache_lookups_total", (("result", "miss"),))] == 2
    assert s[(P + "cache_entries", ())] == 42
    assert s[(P + "requests_in_flight", ())] == 1
    assert s[(P + "multipart_uploads_in_flight", ())] == 1
    m.multipart_finished()
    m.multipart_finished()  # an upload started before a restart: never below zero
    assert samples(m)[(P + "multipart_uploads_in_flight", ())] == 0


def test_cache_results_exported_at_zero() -> None:
    s = samples(Metrics())
    assert s[(P + "cache_lookups_total", (("result", "hit"),))] == 0
    assert s[(P + "cache_lookups_total", (("result", "miss"),))] == 0


def test_label_values_known_in_advance_are_exported_at_zero() -> None:
    """So that the first integrity failure or refusal is an increase from 0 that increase() sees."""
    s = samples(Metrics())
    assert {kind: s[(P + "integrity_failures_total", (("kind", kind),))] for kind in INTEGRITY_KINDS} == dict.fromkeys(
        INTEGRITY_KINDS, 0
    )
    assert set(INTEGRITY_KINDS) >= {"tampered", "unknown-key", "manifest"}
    assert {r: s[(P + "requests_rejected_total", (("reason", r),))] for r in REJECT_REASONS} == {
        "overload": 0,
        "draining": 0,
    }


def test_rejections_and_readiness_move() -> None:
    m = Metrics()
    assert samples(m)[(P + "ready", ())] == 0  # not ready until a check passed
    m.request_rejected("overload")
    m.request_rejected("overload")
    m.request_rejected("draining")
    m.set_ready(True)
    s = samples(m)
    assert s[(P + "requests_rejected_total", (("reason", "overload"),))] == 2
    assert s[(P + "requests_rejected_total", (("reason", "draining"),))] == 1
    assert s[(P + "ready", ())] == 1
    m.set_ready(False)
    assert samples(m)[(P + "ready", ())] == 0


def test_process_series_under_the_prefix() -> None:
    """CPU and memory of the process (from Linux's /proc: the proxy runs on Linux only)."""
    s = samples(Metrics())
    assert s[(P + "process_resident_memory_bytes", ())] > 1 << 20
    assert s[(P + "process_cpu_seconds_total", ())] > 0
    assert s[(P + "process_start_time_seconds", ())] > 1_600_000_000
    assert s[(P + "process_open_fds", ())] >= 3
    assert not any(name.startswith(("process_", "python_")) for name, _ in s)


def test_build_info_reset_on_reload() -> None:
    m = Metrics()
    m.set_build_info("0.1.0", ["old"])
    m.set_build_info("0.1.0", ["new", "old"])
    infos = {k: v for k, v in samples(m).items() if k[0] == P + "build_info"}
    assert infos == {(P + "build_info", (("key_ids", "new,old"), ("version", "0.1.0"))): 1.0}


def test_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.add_encrypted(5)
    assert samples(b)[(P + "bytes_encrypted_total", ())] == 0
    assert samples(a)[(P + "bytes_encrypted_total", ())] == 5
