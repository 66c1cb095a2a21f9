"""The call from the gateway to the AI API's POST /v1/reply, bounded by a deadline.

The deadline travels in the `X-Reply-Deadline-Ms` header so the AI API can answer in
time (with its knowledge base when an LLM is late); the HTTP timeout is that deadline
plus a small margin. Every failure becomes an AIError whose reason labels the metrics.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import urllib3

from . import metrics

log = logging.getLogger(__name__)

DEADLINE_HEADER = "X-Reply-Deadline-Ms"
PARTS_HEADER = "X-Reply-Parts"
REPLY_TYPES = {"text", "image", "news"}
_CONNECT_TIMEOUT_S = 1.0
_READ_MARGIN_S = 0.5


class AIError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AIClient:
    """One connection pool per worker process to the AI API.

    urllib3 directly rather than requests: this call sits on every fresh callback, and
    requests' extra layers cost more CPU than the rest of the request put together.
    """

    def __init__(self, base_url: str, pool_size: int = 64) -> None:
        self.reply_url = base_url.rstrip("/") + "/v1/reply"
        self.health_url = base_url.rstrip("/") + "/health"
        # block=False: a burst beyond the pool opens extra connections instead of queueing.
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, block=False, retries=False)

    def reply(
        self,
        message: dict[str, Any],
        deadline_s: float,
        request_id: str = "",
        timeout_s: float | None = None,
        whole: bool = False,
    ) -> dict | None:
        """The AI API's reply document for `message`, or None for "nothing to say".

        `deadline_s` is what the AI API is told it has; `timeout_s` (default: the deadline)
        is how long we wait, longer when a late answer can still be parked or pushed.
        `whole` asks for a long answer entire, not its first part (customer-service push).
        """
        started = time.monotonic()
        deadline_s = max(deadline_s, 0.05)
        timeout_s = max(timeout_s or 0.0, deadline_s)
        try:
            reply = self._post(message, deadline_s, timeout_s, request_id, whole)
        except AIError as exc:
            metrics.AI_ERRORS.labels(reason=exc.reason).inc()
            metrics.AI_LATENCY.labels(outcome="error").observe(time.monotonic() - started)
            raise
        metrics.AI_LATENCY.labels(outcome="ok").observe(time.monotonic() - started)
        return reply

    def _post(
        self,
        message: dict[str, Any],
        deadline_s: float,
        timeout_s: float,
        request_id: str,
        whole: bool,
    ) -> dict | None:
        headers = {
            "Content-Type": "application/json",
            DEADLINE_HEADER: str(int(deadline_s * 1000)),
            "X-Request-Id": request_id,
        }
        if whole:
            headers[PARTS_HEADER] = "all"
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        timeout = urllib3.Timeout(connect=_CONNECT_TIMEOUT_S, read=timeout_s + _READ_MARGIN_S)
        try:
            response = self.pool.request(
                "POST", self.reply_url, body=body, headers=headers, timeout=timeout
            )
        except urllib3.exceptions.TimeoutError:
            raise AIError("timeout", f"no answer within {timeout_s:.1f}s") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise AIError("connection", f"{type(exc).__name__}") from None
        if response.status != 200:
            raise AIError("http_status", f"AI API answered HTTP {response.status}")
        return _validated_reply(response.data)

    def healthy(self, timeout_s: float = 0.5) -> bool:
        try:
            return self.pool.request("GET", self.health_url, timeout=timeout_s).status == 200
        except (urllib3.exceptions.HTTPError, OSError):
            return False


def _validated_reply(data: bytes) -> dict | None:
    try:
        document = json.loads(data)
    except ValueError:
        raise AIError("bad_response", "AI API answer is not JSON") from None
    if not isinstance(document, dict) or "reply" not in document:
        raise AIError("bad_response", "AI API answer has no 'reply'")
    reply = document["reply"]
    if reply is None:
        return None
    if not isinstance(reply, dict) or reply.get("type") not in REPLY_TYPES:
        raise AIError("bad_response", "AI API reply has an unknown type")
    return reply
