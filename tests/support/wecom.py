"""A fake WeCom (企业微信) group robot on 127.0.0.1 that records what it is sent.

It answers like the real webhook (HTTP 200 with an errcode), so tests can also make it
refuse (errcode 45009, rate limited) and see the sender retry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeWeComRobot:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    errcode: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def contents(self) -> list[str]:
        return [m.get("markdown", {}).get("content", "") for m in self.messages()]


@contextmanager
def fake_wecom_robot() -> Iterator[FakeWeComRobot]:
    """Serve the fake robot in a thread for the duration of the block."""
    robot: FakeWeComRobot

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            errcode = robot.errcode
            if errcode == 0:
                with robot.lock:
                    robot.received.append(json.loads(body))
            answer = json.dumps({"errcode": errcode, "errmsg": "ok" if errcode == 0 else "busy"})
            data = answer.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    robot = FakeWeComRobot(
        url=f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/webhook/send?key=test-key"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield robot
    finally:
        server.shutdown()
        server.server_close()
