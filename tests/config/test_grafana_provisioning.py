"""infra/grafana: provisioned data source with a fixed uid, dashboards that use it, safe login."""

from __future__ import annotations

import re

import pytest

from tests.support.processes import REPO_ROOT, require_binary
from tests.support.promql import (
    DASHBOARD_DIR,
    DATASOURCE_YML,
    EXPORTER_METRICS,
    GRAFANA_DIR,
    dashboard_queries,
    dashboards,
    declared_service_metrics,
    load_yaml,
    metric_names,
    panels,
    promtool_check_exprs,
)

DASHBOARDS = dashboards()
# What issue 6 asks each dashboard to show, as the series its panels must query.
REQUIRED_SERIES = {
    "WeChat gateway": {
        "wechat_requests_total",
        "wechat_request_latency_seconds_bucket",
        "wechat_signature_fail_total",
        "wechat_decrypt_fail_total",
        "wechat_dedup_hits_total",
        "wechat_ai_request_latency_seconds_bucket",
        "wechat_ai_errors_total",
        "wechat_replies_total",
        "wechat_redis_up",
        "redis_up",
        "up",
    },
    "AI API": {
        "ai_requests_total",
        "ai_answer_latency_seconds_count",
        "ai_answer_latency_seconds_bucket",
        "ai_llm_errors_total",
        "ai_llm_fallbacks_total",
        "ai_kb_passages",
    },
}


def datasource():
    [source] = load_yaml(DATASOURCE_YML)["datasources"]
    return source


def test_the_data_source_is_prometheus_with_a_fixed_uid():
    source = datasource()
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(REPO_ROOT / "compose.yaml")["services"]


def test_the_dashboards_are_the_two_asked_for_with_unique_uids():
    titles = sorted(d["title"] for d in DASHBOARDS.values())
    assert titles == ["AI API", "WeChat gateway"]
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and all(uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_and_target_uses_the_provisioned_data_source(name):
    uid = datasource()["uid"]
    ids = []
    for panel in panels(DASHBOARDS[name]):
        ids.append(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip()
    assert len(set(ids)) == len(ids), "panel ids are unique"


@pytest.mark.parametrize("title", sorted(REQUIRED_SERIES))
def test_each_dashboard_shows_what_the_issue_asks(title):
    [dashboard] = [d for d in DASHBOARDS.values() if d["title"] == title]
    named = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            named |= metric_names(target["expr"])
    assert REQUIRED_SERIES[title] <= named, REQUIRED_SERIES[title] - named


def test_the_latency_panel_draws_the_alert_line():
    [dashboard] = [d for d in DASHBOARDS.values() if d["title"] == "WeChat gateway"]
    [panel] = [p for p in panels(dashboard) if "p50 / p95 / p99" in p["title"]]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 1.5 in [s["value"] for s in steps]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_every_metric_a_dashboard_names_exists():
    known = set(declared_service_metrics()) | set(EXPORTER_METRICS)
    for query in dashboard_queries():
        names = metric_names(query.expr)
        assert names, query.where
        assert names <= known, f"{query.where} names unknown metrics {names - known}"


def test_every_dashboard_expression_parses(tmp_path):
    promtool = require_binary("promtool", "apt-get install prometheus")
    promtool_check_exprs(dashboard_queries(), tmp_path, promtool)


def test_the_dashboard_provider_reads_the_files_compose_mounts():
    [provider] = load_yaml(GRAFANA_DIR / "dashboards" / "celestial-nexus.yml")["providers"]
    grafana = load_yaml(REPO_ROOT / "compose.yaml")["services"]["grafana"]
    mount = next(v for v in grafana["volumes"] if v.startswith("./infra/grafana/provisioning:"))
    container_dir = mount.split(":")[1]
    relative = DASHBOARD_DIR.relative_to(GRAFANA_DIR).as_posix()
    assert provider["options"]["path"] == f"{container_dir}/{relative}"
    assert provider["allowUiUpdates"] is False


def test_grafana_login_is_a_secret_and_anonymous_access_is_off():
    grafana = load_yaml(REPO_ROOT / "compose.yaml")["services"]["grafana"]
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the password comes from a secret file"
    secret_file = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    match = re.fullmatch(r"/run/secrets/(\w+)", secret_file)
    assert match and match.group(1) in grafana["secrets"]


def test_grafana_knows_the_scrape_interval():
    # $__rate_interval is 4 x this: it must be the real scrape interval or rates go blank
    scrape = load_yaml(REPO_ROOT / "infra" / "prometheus" / "prometheus.yml")["global"]
    assert datasource()["jsonData"]["timeInterval"] == scrape["scrape_interval"]
