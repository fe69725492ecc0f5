"""deploy/monitoring/ checked with Prometheus's own promtool (from Debian's prometheus package,
tests/support/toolenv.py): the alert rules load (``promtool check rules``) and pass their unit
tests (``promtool test rules``: input series and the alerts expected of them), the PrometheusRule
manifest holds the same groups, and every dashboard query is valid PromQL.

That every metric these name is one the proxy really exports is checked against a running proxy
in tests/functional/test_monitoring.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support import monitoring


def run(promtool: str, *args: str, cwd: Path = monitoring.MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_is_prometheus_promtool(promtool: str) -> None:
    done = run(promtool, "--version")
    assert done.returncode == 0 and "promtool, version 2." in done.stdout + done.stderr, done


def test_rules_load(promtool: str) -> None:
    done = run(promtool, "check", "rules", monitoring.RULES.name)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"SUCCESS: {len(monitoring.rule_exprs())} rules found" in output


def test_rules_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "test", "rules", monitoring.RULES_TEST.name)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "SUCCESS" in output, output
    tested = yaml.safe_load(monitoring.RULES_TEST.read_text())
    alerts = {case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", [])}
    rules = yaml.safe_load(monitoring.RULES.read_text())
    assert alerts == {rule["alert"] for group in rules["groups"] for rule in group["rules"]}  # each one tested
    firing = {
        case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert firing == alerts  # ... and seen firing, not only silent


def test_a_broken_rule_fails_its_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the integrity alert's threshold raised, they do."""
    rules = monitoring.RULES.read_text()
    assert "[15m])) > 0\n" in rules
    (tmp_path / monitoring.RULES.name).write_text(rules.replace("[15m])) > 0\n", "[15m])) > 5\n", 1))
    (tmp_path / monitoring.RULES_TEST.name).write_text(monitoring.RULES_TEST.read_text())
    done = run(promtool, "test", "rules", monitoring.RULES_TEST.name, cwd=tmp_path)
    assert done.returncode != 0 and "MedusaCryptProxyIntegrityFailure" in done.stdout + done.stderr


def test_prometheusrule_manifest_holds_the_same_rules() -> None:
    manifest = yaml.safe_load(monitoring.PROMETHEUS_RULE.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "medusa-crypt-proxy"
    assert manifest["spec"] == yaml.safe_load(monitoring.RULES.read_text())


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, Grafana's variables replaced, as a recording rule that promtool parses."""
    exprs = monitoring.dashboard_exprs()
    assert len(exprs) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": monitoring.as_promql(e)} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout + done.stderr


def test_dashboard_is_well_formed() -> None:
    board = monitoring.dashboard()
    assert board["uid"] == "medusa-crypt-proxy"
    ids = [panel["id"] for panel in monitoring.panels()]
    assert len(ids) == len(set(ids))
    names = {var["name"] for var in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    for panel in monitoring.panels():
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # Every query follows the job and instance chosen at the top.
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    # What the dashboard is for: each of these is on it.
    used = monitoring.metric_names(monitoring.dashboard_exprs())
    assert {
        f"medusa_crypt_proxy_{name}"
        for name in (
            "s3_requests_total",
            "s3_request_duration_seconds_bucket",
            "client_bytes_received_total",
            "client_bytes_sent_total",
            "upstream_bytes_sent_total",
            "upstream_bytes_received_total",
            "bytes_encrypted_total",
            "bytes_decrypted_total",
            "upstream_requests_total",
            "upstream_errors_total",
            "integrity_failures_total",
            "cache_lookups_total",
            "requests_in_flight",
            "multipart_uploads_in_flight",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "ready",
        )
    } <= used
