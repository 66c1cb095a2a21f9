"""An alert reaches a person: real Prometheus -> real Alertmanager -> the relay -> a WeCom robot.

Prometheus loads the real rules with their `for` shortened to 1 s and scrapes targets that
do not answer, so ScrapeTargetDown (and WeChatGatewayAllReplicasDown) fire for real.
Alertmanager runs a loopback copy of infra/alertmanager/alertmanager.yml (only the relay's
address and the group waits differ); the relay posts to a fake WeCom robot on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.observability import stack
from tests.support.processes import free_port, wait_until
from tests.support.wecom import fake_wecom_robot

pytestmark = pytest.mark.integration


def inhibited(alertmanager_url: str, **labels: str) -> bool:
    with urllib.request.urlopen(f"{alertmanager_url}/api/v2/alerts", timeout=5) as response:
        alerts = json.load(response)
    return any(
        alert["labels"].get("alertname") == "ScrapeTargetDown"
        and labels.items() <= alert["labels"].items()
        and alert["status"]["inhibitedBy"]
        for alert in alerts
    )


def grouped(message: str) -> bool:
    """Several alerts in one message (【告警】 in the header, then once per alert), ai-api's too."""
    return message.count("【告警】") >= 3 and "job=ai-api" in message


def test_a_firing_rule_reaches_the_wecom_robot_rendered(tmp_path):
    procs = []
    try:
        with fake_wecom_robot() as robot:
            relay = stack.start_relay(tmp_path, robot.webhook_url)
            procs.append(relay)
            alertmanager = stack.start_alertmanager(
                tmp_path, stack.alertmanager_config(relay.extra["url"])
            )
            procs.append(alertmanager)
            dead = f"127.0.0.1:{free_port()}"  # nothing listens: up == 0
            relay_target = f"127.0.0.1:{relay.port}"
            targets = {
                "prometheus": [],
                "wechat-gateway": [dead],
                "ai-api": [dead],
                "redis": [dead],
                "nginx": [dead],
                "alertmanager": [f"127.0.0.1:{alertmanager.port}"],
                "alert-relay": [relay_target],
                "tls-certificate": [dead],
            }
            config = stack.prometheus_config(
                targets,
                rule_files=stack.rules_with_short_for(tmp_path),
                alertmanager=f"127.0.0.1:{alertmanager.port}",
                blackbox=dead,
            )
            procs.append(stack.start_prometheus(tmp_path, config))

            def delivered(alertname: str) -> list[str]:
                return [c for c in robot.contents() if f"**{alertname}**" in c.splitlines()[0]]

            # grouped by alert name: the down targets arrive together in one message (the
            # header says 【告警】 once, then once per alert)
            wait_until(
                lambda: any(grouped(m) for m in delivered("ScrapeTargetDown")),
                60,
                "one ScrapeTargetDown message listing several targets",
            )
            wait_until(
                lambda: bool(delivered("WeChatGatewayAllReplicasDown")),
                30,
                "WeChatGatewayAllReplicasDown",
            )
            # the inhibit rule: with every replica down, the per-replica target alert is muted
            wait_until(
                lambda: inhibited(alertmanager.extra["url"], job="wechat-gateway"),
                30,
                "ScrapeTargetDown{job=wechat-gateway} inhibited",
            )
            assert not inhibited(alertmanager.extra["url"], job="ai-api")
    finally:
        for proc in reversed(procs):
            proc.stop()

    [message, *_] = [m for m in delivered("ScrapeTargetDown") if grouped(m)]
    header = message.splitlines()[0]
    assert header.startswith('<font color="warning">【告警】</font>')
    assert "warning" in header
    # the rule's Chinese summary, rendered with the target's labels, and the runbook section
    assert "抓取目标宕机：ai-api" in message
    assert f"instance={dead}, job=ai-api" in message
    assert "`docs/runbook.md#target-down`" in message
    assert "北京时间" in message
    assert len(message.encode()) <= 4096
    [critical, *_] = delivered("WeChatGatewayAllReplicasDown")
    assert "没有一个网关副本在线" in critical and "critical" in critical.splitlines()[0]
