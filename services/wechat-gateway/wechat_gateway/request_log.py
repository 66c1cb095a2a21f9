"""One count and one structured log line per request, for every route.

/wechat requests are counted in `wechat_requests_total` and timed in
`wechat_request_latency_seconds`; every request but the frequent, uneventful /health and
/metrics polls gets a log line (method, route, status, latency, client, request id, plus
what the handler learnt: mode, msg type, outcome, a hash of the openid).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import logs, metrics
from .metrics import labelled

log = logging.getLogger("wechat_gateway")

COUNTED_ROUTE = "/wechat"
QUIET_ROUTES = frozenset({"/health", "/metrics"})
_METHODS = frozenset({"GET", "POST"})


def record(
    method: str,
    route: str,
    status: int,
    started: float,
    client_ip: str | None,
    request_id: str,
    fields: dict[str, Any],
) -> None:
    """Count and log one finished request; `fields` are the handler's log fields."""
    if route in QUIET_ROUTES:
        return
    latency_s = time.time() - started
    outcome = fields.get("outcome") or ("ok" if status < 400 else "rejected")
    if route == COUNTED_ROUTE:
        _count(
            method if method in _METHODS else "OTHER",
            fields.get("mode", "unknown"),
            outcome,
            latency_s,
        )
    logs.write_info(
        log,
        "request",
        {
            "event": "request",
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(latency_s * 1000, 1),
            "client_ip": client_ip,
            "request_id": request_id,
            **fields,
            "outcome": outcome,
        },
    )


def _count(method: str, mode: str, outcome: str, latency_s: float) -> None:
    """A held attempt is counted but not timed: it is kept open past WeChat's cut on
    purpose, and its 5.5 s would raise the latency alert (which watches the gateway's own
    speed) whenever the AI is slow, which the late-answer alert already says."""
    labelled(metrics.REQUESTS, method, mode, outcome).inc()
    if outcome != "held":
        labelled(metrics.REQUEST_LATENCY, method).observe(latency_s)
