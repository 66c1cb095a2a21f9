"""docs/monitoring.md and docs/runbook.md keep up with the rules, the metrics and the dashboards."""

from __future__ import annotations

import re

from tests.support.processes import REPO_ROOT
from tests.support.promql import (
    EXPORTER_METRICS,
    RUNBOOK,
    alert_rules,
    dashboards,
    declared_service_metrics,
    panels,
)

MONITORING = (REPO_ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
RUNBOOK_TEXT = RUNBOOK.read_text(encoding="utf-8")
# The sections issue 6 asks the runbook for, by anchor.
RUNBOOK_SECTIONS = {
    "token-rotation",
    "signature-failures",
    "latency",
    "decrypt-failures",
    "ai-errors",
    "dedup-surge",
    "redis-down",
    "late-answers",
    "target-down",
    "certificate-expiry",
}


def family(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def test_every_alert_is_documented_with_its_runbook_section():
    for rule in alert_rules():
        row = next(
            (line for line in MONITORING.splitlines() if line.startswith(f"| `{rule['alert']}` |")),
            None,
        )
        assert row, f"docs/monitoring.md has no row for {rule['alert']}"
        assert rule["annotations"]["runbook_url"].replace("docs/", "") in row
        assert f"| {rule['for']} | {rule['labels']['severity']} |" in row


def test_every_metric_is_documented():
    names = {family(s) for s in declared_service_metrics()} | set(EXPORTER_METRICS)
    names.add("alert_relay_notifications_total")
    missing = sorted(n for n in names if f"`{n}`" not in MONITORING)
    assert not missing, f"docs/monitoring.md does not describe {missing}"


def test_every_dashboard_and_panel_is_described():
    for dashboard in dashboards().values():
        assert f"### {dashboard['title']} (uid `{dashboard['uid']}`)" in MONITORING.replace(
            "（", " ("
        ).replace("）", ")")
        for panel in panels(dashboard):
            # the Chinese part of "签名失败 Signature failures (5m)"; a title without any, whole
            ideographs = [i for i, c in enumerate(panel["title"]) if "\u4e00" <= c <= "\u9fff"]
            name = panel["title"][: ideographs[-1] + 1] if ideographs else panel["title"]
            assert name in MONITORING, f"panel {panel['title']!r} is not described"


def test_the_runbook_has_every_section_with_a_stable_anchor():
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', RUNBOOK_TEXT))
    assert anchors >= RUNBOOK_SECTIONS, RUNBOOK_SECTIONS - anchors
    for link in re.findall(r"\]\(#([a-z0-9-]+)\)", RUNBOOK_TEXT):
        assert link in anchors, f"runbook links to a missing section #{link}"
    for link in re.findall(r"runbook\.md#([a-z0-9-]+)", MONITORING):
        assert link in anchors, f"monitoring.md links to a missing runbook section #{link}"
