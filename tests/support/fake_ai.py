"""A stand-in AI API on 127.0.0.1: answers /v1/reply after a set latency, counts calls.

Runs in a thread of the test process, so a test can change its behaviour between
requests and read what it received; the gateway reaches it over real HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.loopback_server import LoopbackServer, QuietHandler


class FakeAI(LoopbackServer):
    """Configurable behaviour: `latency_s`, `status`, `raw_body`, or a `reply_for` function."""

    def __init__(self) -> None:
        self.latency_s = 0.0
        self.latency_for = lambda message: self.latency_s
        self.completed: list[str] = []  # dedup keys whose answer was written
        self.status = 200
        self.raw_body: bytes | None = None
        self.reply_for = lambda message: {
            "type": "text",
            "content": f"答：{message.get('content')}",
        }
        self.calls: Counter[str] = Counter()
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.connections_opened = 0
        self._lock = threading.Lock()

        super().__init__(self._handler_class())

    def calls_for(self, dedup_key: str) -> int:
        with self._lock:
            return self.calls[dedup_key]

    def _record(self, message: dict[str, Any], headers: dict[str, str], path: str) -> None:
        with self._lock:
            self.calls[message.get("dedup_key", "")] += 1
            self.received.append(message)
            self.headers.append(headers)
            self.paths.append(path)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Uvicorn serves the real AI API

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections_opened += 1

            def do_GET(self) -> None:
                self.send_body(200, b'{"status": "ok"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                message = json.loads(self.rfile.read(length) or b"{}")
                fake._record(message, dict(self.headers), self.path)
                latency = fake.latency_for(message)
                if latency:
                    time.sleep(latency)
                if fake.raw_body is not None:
                    self.send_body(fake.status, fake.raw_body)
                    return
                body = json.dumps({"reply": fake.reply_for(message)}, ensure_ascii=False)
                self.send_body(fake.status, body.encode())
                with fake._lock:
                    fake.completed.append(message.get("dedup_key", ""))

        return Handler
