"""What the monitoring files ask of Prometheus: alert rules, dashboard queries, metric names.

Shared by the config tests (static: promtool, names against the services' declarations)
and the observability proof (the same expressions through a real Prometheus).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "infra" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "alerts.test.yml"
ALERTMANAGER_YML = REPO_ROOT / "infra" / "alertmanager" / "alertmanager.yml"
GRAFANA_DIR = REPO_ROOT / "infra" / "grafana" / "provisioning"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards" / "json"
DATASOURCE_YML = GRAFANA_DIR / "datasources" / "prometheus.yml"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"

# Metrics that come from outside the services' code: Prometheus's own per-target series
# and the exporters'. Measured from Debian's prometheus-redis-exporter 1.45,
# prometheus-nginx-exporter 0.11 and prometheus-blackbox-exporter 0.23; the observability
# test checks each against the exporters' live output.
EXPORTER_METRICS = {
    "up": "prometheus",
    "redis_up": "redis-exporter",
    "nginx_up": "nginx-exporter",
    "nginx_http_requests_total": "nginx-exporter",
    "nginx_connections_active": "nginx-exporter",
    "probe_success": "blackbox-exporter",
    "probe_ssl_earliest_cert_expiry": "blackbox-exporter",
}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it lives (for messages)."""

    where: str
    expr: str


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def alert_queries() -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["expr"].strip()) for rule in alert_rules()]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows and their nested panels flattened, rows skipped)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from (p for p in panel.get("panels", []) if p.get("type") != "row")
        else:
            yield panel


def dashboard_queries(rate_interval: str = "1m") -> list[Query]:
    """Every panel target, with Grafana's $__rate_interval replaced as Grafana would."""
    queries = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", rate_interval)
                queries.append(Query(f"{name}: {panel['title']} [{target['refId']}]", expr))
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, not a full parser)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def series_names(family_name: str, family_type: str) -> set[str]:
    """The series names prometheus_client exposes for one metric family."""
    if family_type == "counter":
        return {f"{family_name}_total"}
    if family_type == "histogram":
        return {f"{family_name}_bucket", f"{family_name}_sum", f"{family_name}_count"}
    if family_type == "summary":
        return {family_name, f"{family_name}_sum", f"{family_name}_count"}
    return {family_name}


def declared_service_metrics() -> dict[str, str]:
    """Series name -> service, from the services' metrics modules (their source of truth)."""
    from prometheus_client.metrics import MetricWrapperBase

    import celestial_nexus.metrics as ai_metrics
    import wechat_gateway.metrics as gateway_metrics

    declared: dict[str, str] = {}
    for service, module in (("wechat-gateway", gateway_metrics), ("ai-api", ai_metrics)):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            for family in value.describe():
                declared.update(dict.fromkeys(series_names(family.name, family.type), service))
    # Declared on first use (a gateway without Redis must not export it): see redis_up().
    declared[gateway_metrics.REDIS_UP_NAME] = "wechat-gateway"
    return declared


def promtool_check_exprs(queries: Iterable[Query], tmp_dir: Path, promtool: str) -> None:
    """Parse every expression with promtool (as recording rules); raise with promtool's words."""
    queries = list(queries)
    rules = {
        "groups": [
            {
                "name": "parse-check",
                "rules": [
                    {"record": f"check:expr_{i}", "expr": q.expr} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_dir / "parse-check.yml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        listing = "\n".join(f"  check:expr_{i}  {q.where}: {q.expr}" for i, q in enumerate(queries))
        raise AssertionError(
            f"promtool rejects an expression:\n{result.stdout}{result.stderr}\n{listing}"
        )
