"""A fake WeCom (企业微信) group robot on 127.0.0.1 that records what it is sent.

It answers like the real webhook (HTTP 200 with an errcode), so tests can also make it
refuse (errcode 45009, rate limited) and see the sender retry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.loopback_server import LoopbackServer, send_json


class FakeWeComRobot(LoopbackServer):
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.errcode = 0  # what the next posts are answered with; 0 accepts them
        self.lock = threading.Lock()
        super().__init__(self._handler_class())

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/cgi-bin/webhook/send?key=test-key"

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def contents(self) -> list[str]:
        return [m.get("markdown", {}).get("content", "") for m in self.messages()]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                errcode = robot.errcode
                if errcode == 0:
                    with robot.lock:
                        robot.received.append(json.loads(body))
                answer = {"errcode": errcode, "errmsg": "ok" if errcode == 0 else "busy"}
                send_json(self, 200, answer)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def fake_wecom_robot() -> Iterator[FakeWeComRobot]:
    """Serve the fake robot for the duration of the block."""
    robot = FakeWeComRobot().start()
    try:
        yield robot
    finally:
        robot.stop()
