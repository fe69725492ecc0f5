"""What deploy/monitoring/ holds, read for the tests: the dashboard's and the rules' PromQL
expressions and the proxy's metric names they use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheus-rules.yaml"
RULES_TEST = MONITORING / "prometheus-rules.test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"

METRIC = re.compile(r"\bmedusa_crypt_proxy_[a-z0-9_]+")
# A selector of one of the proxy's series: its name and the label matchers in braces.
SELECTOR = re.compile(r"\b(medusa_crypt_proxy_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# Labels Prometheus adds to every scraped series (not the proxy's).
TARGET_LABELS = frozenset({"job", "instance"})


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs() -> list[str]:
    """The PromQL of every panel's queries."""
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def variable_queries() -> list[str]:
    """The dashboard variables' queries (Grafana's ``label_values(...)``, not PromQL)."""
    return [var["query"]["query"] for var in dashboard()["templating"]["list"] if var.get("type") == "query"]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def selector_labels(exprs: list[str]) -> dict[str, set[str]]:
    """metric name -> the label names its selectors match on (target labels left out)."""
    labels: dict[str, set[str]] = {}
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            labels.setdefault(name, set()).update(set(MATCHER.findall(matchers)) - TARGET_LABELS)
    return labels


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for promtool."""
    return expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
