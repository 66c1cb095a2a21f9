"""alert_relay.render: one Alertmanager notification -> one WeCom markdown message."""

from __future__ import annotations

import copy

from alert_relay.render import MAX_CONTENT_BYTES, render

ALERT = {
    "status": "firing",
    "labels": {
        "alertname": "WeChatSignatureFailuresHigh",
        "severity": "warning",
        "instance": "wechat-gateway-1:9090",
        "reason": "bad_signature",
    },
    "annotations": {
        "summary": "微信回调签名校验失败增多",
        "description": "过去 5 分钟签名失败 25 次（阈值 10）。\n先查 WECHAT_TOKEN 是否刚修改。",
        "runbook_url": "docs/runbook.md#signature-failures",
    },
    "startsAt": "2026-11-29T03:47:02.123456789Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "fingerprint": "abc",
}
PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="WeChatSignatureFailuresHigh"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "wecom-relay",
    "groupLabels": {"alertname": "WeChatSignatureFailuresHigh"},
    "commonLabels": {"alertname": "WeChatSignatureFailuresHigh", "severity": "warning"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [ALERT],
}


def test_a_firing_alert_shows_name_summary_description_labels_time_and_runbook():
    content = render(PAYLOAD)
    assert content.startswith(
        '<font color="warning">【告警】</font>**WeChatSignatureFailuresHigh**'
    )
    assert "warning" in content.splitlines()[0]
    assert "告警中 1 条，已恢复 0 条" in content
    assert "**微信回调签名校验失败增多**" in content
    # every description line is quoted, so WeCom renders the block together
    assert "> 过去 5 分钟签名失败 25 次（阈值 10）。\n> 先查 WECHAT_TOKEN 是否刚修改。" in content
    assert "instance=wechat-gateway-1:9090, reason=bad_signature" in content
    assert "alertname=" not in content
    # 03:47:02 UTC is 11:47:02 in Beijing; nanoseconds are dropped
    assert "开始：2026-11-29 11:47:02 北京时间" in content
    assert "`docs/runbook.md#signature-failures`" in content


def test_runbook_becomes_a_link_with_a_base_url():
    content = render(PAYLOAD, "https://git.example.cn/nexus/-/blob/main/")
    expected = "[signature-failures](https://git.example.cn/nexus/-/blob/main/docs/runbook.md#signature-failures)"
    assert expected in content


def test_an_absolute_runbook_url_is_kept():
    payload = copy.deepcopy(PAYLOAD)
    payload["alerts"][0]["annotations"]["runbook_url"] = "https://wiki.example.cn/runbook#latency"
    assert "(https://wiki.example.cn/runbook#latency)" in render(payload, "https://other/")


def test_resolved_alerts_say_so_and_show_the_end_time():
    payload = copy.deepcopy(PAYLOAD)
    payload["status"] = "resolved"
    payload["alerts"][0].update(status="resolved", endsAt="2026-11-29T04:00:00Z")
    content = render(payload)
    assert content.startswith('<font color="info">【已恢复】</font>')
    assert "告警中 0 条，已恢复 1 条" in content
    assert "恢复：2026-11-29 12:00:00 北京时间" in content


def test_firing_alerts_come_before_resolved_ones():
    payload = copy.deepcopy(PAYLOAD)
    resolved = copy.deepcopy(ALERT)
    resolved["status"] = "resolved"
    resolved["annotations"]["summary"] = "已经好了的那条"
    payload["alerts"] = [resolved, ALERT]
    content = render(payload)
    assert content.index("微信回调签名校验失败增多") < content.index("已经好了的那条")


def test_many_alerts_fit_in_one_message_and_the_rest_are_counted():
    payload = copy.deepcopy(PAYLOAD)
    payload["alerts"] = []
    for i in range(60):
        alert = copy.deepcopy(ALERT)
        alert["labels"]["instance"] = f"wechat-gateway-{i}:9090"
        payload["alerts"].append(alert)
    payload["truncatedAlerts"] = 5
    content = render(payload)
    assert len(content.encode("utf-8")) <= MAX_CONTENT_BYTES
    shown = content.count("**微信回调签名校验失败增多**")
    assert 0 < shown < 60
    assert f"另有 {60 - shown + 5} 条未显示" in content


def test_one_huge_alert_is_cut_on_a_character_boundary():
    payload = copy.deepcopy(PAYLOAD)
    payload["alerts"][0]["annotations"]["description"] = "签名" * 3000
    content = render(payload)
    encoded = content.encode("utf-8")
    assert len(encoded) <= MAX_CONTENT_BYTES
    encoded.decode("utf-8")  # no half character
    assert "…" in content


def test_a_payload_without_annotations_still_renders():
    payload = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "X"}}]}
    content = render(payload)
    assert "**X**" in content
    assert "开始：-" in content
