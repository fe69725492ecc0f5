"""The metric names deploy/monitoring/ uses (the Grafana dashboard, the alert rules) against a
real proxy in front of moto and rclone: after a few requests of each kind, every one of them is in
its /metrics, and every label a selector matches on is one that series has.

The rules themselves are checked and unit-tested with promtool in tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import urllib.request

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support import monitoring
from tests.support.servers import ProxyProcess

DATA_KEY = "node1/backup1/data/ks1/t-1/nb-1-big-Data.db"
META_KEY = "node1/backup1/meta/schema.cql"


def scrape(proxy: ProxyProcess) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry."""
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def drive(proxy: ProxyProcess, bucket: str) -> None:
    """A little of everything: encrypted and plaintext PUT and GET, HEADs, a listing, an upstream
    error (a missing key), a multipart upload started and one aborted, a health probe."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"sstable " * 4096)
    client.put_object(Bucket=bucket, Key=META_KEY, Body=b"CREATE TABLE t;")
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == b"sstable " * 4096
    client.head_object(Bucket=bucket, Key=META_KEY)
    client.list_objects_v2(Bucket=bucket, Prefix="node1/")
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="node1/missing")
    client.create_multipart_upload(Bucket=bucket, Key="node1/backup1/data/ks1/t-1/big-Data.db")
    aborted = client.create_multipart_upload(Bucket=bucket, Key="node1/backup1/data/ks1/t-1/other-Data.db")
    client.abort_multipart_upload(
        Bucket=bucket, Key="node1/backup1/data/ks1/t-1/other-Data.db", UploadId=aborted["UploadId"]
    )
    with urllib.request.urlopen(proxy.endpoint_url + "/readyz", timeout=10) as reply:
        assert reply.status == 200


def test_every_metric_the_dashboard_and_rules_use_is_exported(proxy: ProxyProcess, bucket: str) -> None:
    drive(proxy, bucket)
    exported = scrape(proxy)
    exprs = monitoring.dashboard_exprs() + monitoring.variable_queries() + monitoring.rule_exprs()
    used = monitoring.metric_names(exprs)
    assert len(used) >= 20  # the extraction found the queries
    missing = sorted(used - set(exported))
    assert not missing, f"used in deploy/monitoring/ but not exported: {missing}"

    # A selector's labels are labels of that series (``up`` and the job/instance target labels
    # are Prometheus's own).
    for name, labels in monitoring.selector_labels(exprs).items():
        assert labels <= exported[name], f"{name}: no label {sorted(labels - exported[name])}"

    # And what the requests above made move is there with the labels the panels group by.
    assert {"operation", "status"} <= exported["medusa_crypt_proxy_s3_requests_total"]
    assert {"operation", "le"} <= exported["medusa_crypt_proxy_s3_request_duration_seconds_bucket"]
    assert {"code"} <= exported["medusa_crypt_proxy_upstream_errors_total"]
    assert {"kind"} <= exported["medusa_crypt_proxy_integrity_failures_total"]


def test_the_extraction_sees_a_name_that_is_not_exported(proxy: ProxyProcess) -> None:
    """The check above can fail: a misspelt series is reported missing."""
    exported = scrape(proxy)
    used = monitoring.metric_names(['sum(rate(medusa_crypt_proxy_s3_request_total{job=~"$job"}[5m]))'])
    assert used == {"medusa_crypt_proxy_s3_request_total"}
    assert used - set(exported) == used
    labels = monitoring.selector_labels(['medusa_crypt_proxy_cache_lookups_total{job=~"$job", outcome="hit"}'])
    assert labels == {"medusa_crypt_proxy_cache_lookups_total": {"outcome"}}
    assert not labels["medusa_crypt_proxy_cache_lookups_total"] <= exported["medusa_crypt_proxy_cache_lookups_total"]
