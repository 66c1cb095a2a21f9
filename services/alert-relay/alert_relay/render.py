"""Render one Alertmanager notification (webhook payload version 4) as WeCom markdown.

WeCom group robots accept a markdown subset (bold, `<font color=...>`, quotes, links) and
at most 4096 bytes of content:
https://developer.work.weixin.qq.com/document/path/91770
One notification becomes exactly one message: alerts that do not fit are counted, not sent
as more messages, so a phone is not flooded.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

MAX_CONTENT_BYTES = 4096
# China has one time zone and no daylight saving: on-call people read Beijing time.
BEIJING = timezone(timedelta(hours=8), "北京时间")
# Labels that the header already shows, or that say nothing to a person.
_HIDDEN_LABELS = {"alertname", "severity"}
_STATUS = {
    "firing": ('<font color="warning">【告警】</font>', "开始"),
    "resolved": ('<font color="info">【已恢复】</font>', "恢复"),
}


def render(payload: dict[str, Any], runbook_base_url: str = "") -> str:
    """The markdown content for one notification, at most MAX_CONTENT_BYTES bytes of UTF-8."""
    alerts = [a for a in payload.get("alerts") or [] if isinstance(a, dict)]
    # Firing first: that is what needs a person.
    alerts.sort(key=lambda a: a.get("status") != "firing")
    firing = sum(1 for a in alerts if a.get("status") == "firing")
    group = payload.get("groupLabels") or payload.get("commonLabels") or {}
    name = group.get("alertname") or "Alertmanager"
    severity = (payload.get("commonLabels") or {}).get("severity", "")
    header = (
        f"{_STATUS.get(str(payload.get('status')), _STATUS['firing'])[0]}**{name}**"
        f"{f' · {severity}' if severity else ''}\n"
        f"告警中 {firing} 条，已恢复 {len(alerts) - firing} 条"
    )
    not_shown = int(payload.get("truncatedAlerts") or 0)
    blocks: list[str] = []
    budget = MAX_CONTENT_BYTES - _size(header) - _size(_footer(99999)) - 4
    for index, alert in enumerate(alerts):
        block = _alert_block(alert, runbook_base_url)
        room = budget - sum(_size(b) + 2 for b in blocks) - 2
        if _size(block) > room:
            if not blocks:  # a single huge alert: cut it rather than send nothing
                blocks.append(_cut(block, room))
                not_shown += len(alerts) - 1
            else:
                not_shown += len(alerts) - index
            break
        blocks.append(block)
    parts = [header, *blocks]
    if not_shown:
        parts.append(_footer(not_shown))
    return "\n\n".join(parts)


def _alert_block(alert: dict[str, Any], runbook_base_url: str) -> str:
    annotations = alert.get("annotations") or {}
    labels = alert.get("labels") or {}
    badge, when_word = _STATUS.get(str(alert.get("status")), _STATUS["firing"])
    when = alert.get("startsAt") if alert.get("status") != "resolved" else alert.get("endsAt")
    lines = [f"{badge}**{_one_line(annotations.get('summary') or labels.get('alertname', ''))}**"]
    description = (annotations.get("description") or "").strip()
    lines += [f"> {line}" for line in description.splitlines() if line.strip()]
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _HIDDEN_LABELS)
    if shown:
        lines.append(f'> <font color="comment">{_one_line(shown)}</font>')
    lines.append(f'> <font color="comment">{when_word}：{_beijing_time(when)}</font>')
    runbook = _runbook_link(annotations.get("runbook_url", ""), runbook_base_url)
    if runbook:
        lines.append(f"> 处理手册：{runbook}")
    return "\n".join(lines)


def _runbook_link(runbook_url: str, base_url: str) -> str:
    runbook_url = runbook_url.strip()
    if not runbook_url:
        return ""
    if re.match(r"https?://", runbook_url):
        return f"[{runbook_url.rsplit('#', 1)[-1]}]({runbook_url})"
    if base_url:
        url = f"{base_url.rstrip('/')}/{runbook_url.lstrip('/')}"
        return f"[{runbook_url.rsplit('#', 1)[-1]}]({url})"
    return f"`{runbook_url}`"


def _beijing_time(value: Any) -> str:
    """Alertmanager's RFC 3339 time (nanoseconds, 'Z') as Beijing time; '-' if unknown."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return "-"
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return value
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    moment = datetime.fromisoformat(match.group(1) + zone)
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S 北京时间")


def _footer(count: int) -> str:
    return f"……另有 {count} 条未显示，请在 Alertmanager 或 Prometheus 中查看。"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut(text: str, max_bytes: int) -> str:
    """Cut on a character boundary so the result, with an ellipsis, fits max_bytes."""
    ellipsis = "…"
    limit = max(0, max_bytes - _size(ellipsis))
    cut = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    return cut + ellipsis
