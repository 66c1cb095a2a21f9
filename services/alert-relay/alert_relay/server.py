"""The relay's HTTP server: POST /alertmanager, GET /health, GET /metrics.

Alertmanager retries a notification when the webhook answers 5xx, so a failed delivery to
WeCom is answered 502 and Alertmanager keeps trying; a payload that can never be delivered
(not JSON, no alerts) is answered 400 so it is not retried forever.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from alert_relay.config import Settings
from alert_relay.render import render

log = logging.getLogger("alert_relay")

MAX_BODY_BYTES = 1 << 20  # Alertmanager caps a notification at max_alerts (20) alerts


class DeliveryError(Exception):
    """WeCom did not accept the message; the text is safe to log (no webhook key)."""


def send_to_wecom(url: str, content: str, timeout_s: float) -> None:
    """Post one markdown message to a WeCom group robot; raise DeliveryError unless errcode 0.

    WeCom answers HTTP 200 even for errors (invalid key 93000, rate limit 45009: 20
    messages a minute per robot), so the errcode in the body decides.
    """
    body = json.dumps(
        {"msgtype": "markdown", "markdown": {"content": content}}, ensure_ascii=False
    ).encode("utf-8")
    # The scheme is checked to be http(s) in config.Settings.
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            answer = json.loads(response.read(65536) or b"{}")
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"WeCom answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"WeCom unreachable: {type(reason).__name__}") from None
    except ValueError:
        raise DeliveryError("WeCom answered something that is not JSON") from None
    if not isinstance(answer, dict) or answer.get("errcode") != 0:
        code = answer.get("errcode") if isinstance(answer, dict) else None
        message = answer.get("errmsg", "") if isinstance(answer, dict) else ""
        raise DeliveryError(f"WeCom errcode {code}: {str(message)[:120]}")


class Counters:
    """alert_relay_notifications_total{result}: sent, failed (retried by Alertmanager), rejected."""

    RESULTS = ("sent", "failed", "rejected")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.RESULTS, 0)

    def inc(self, result: str) -> None:
        with self._lock:
            self._values[result] += 1

    def exposition(self) -> str:
        with self._lock:
            values = dict(self._values)
        lines = [
            "# HELP alert_relay_notifications_total Alertmanager notifications handled, by result.",
            "# TYPE alert_relay_notifications_total counter",
            *(f'alert_relay_notifications_total{{result="{k}"}} {v}' for k, v in values.items()),
        ]
        return "\n".join(lines) + "\n"


Sender = Callable[[str, str, float], None]


def create_server(settings: Settings, sender: Sender = send_to_wecom) -> ThreadingHTTPServer:
    """A server bound to settings.host:settings.port (port 0 picks a free one); not started."""
    counters = Counters()

    class Handler(BaseHTTPRequestHandler):
        server_version = "alert-relay"
        sys_version = ""

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(HTTPStatus.OK, "ok\n")
            elif self.path == "/metrics":
                self._answer(
                    HTTPStatus.OK, counters.exposition(), "text/plain; version=0.0.4; charset=utf-8"
                )
            else:
                self._answer(HTTPStatus.NOT_FOUND, "not found\n")

        def do_POST(self) -> None:
            if self.path != "/alertmanager":
                self._answer(HTTPStatus.NOT_FOUND, "not found\n")
                return
            payload = self._read_payload()
            if payload is None:
                counters.inc("rejected")
                return
            content = render(payload, settings.runbook_base_url)
            try:
                sender(settings.wecom_webhook_url, content, settings.send_timeout_s)
            except DeliveryError as exc:
                counters.inc("failed")
                log.warning("delivery failed, Alertmanager will retry: %s", exc)
                self._answer(HTTPStatus.BAD_GATEWAY, f"{exc}\n")
                return
            counters.inc("sent")
            log.info(
                "sent %s (%d alerts)",
                payload.get("groupKey", "?"),
                len(payload.get("alerts") or []),
            )
            self._answer(HTTPStatus.OK, "sent\n")

        def _read_payload(self) -> dict[str, Any] | None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")
                return None
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                self._answer(HTTPStatus.BAD_REQUEST, "body is not JSON\n")
                return None
            if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
                self._answer(HTTPStatus.BAD_REQUEST, "not an Alertmanager notification\n")
                return None
            return payload

        def _answer(
            self, status: HTTPStatus, text: str, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            body = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((settings.host, settings.port), Handler)
    server.daemon_threads = True
    return server
