"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for the LLM tests.

It records every request and answers according to `mode`: ok, slow (holds the request
until released), http_500, malformed, refusal, empty, drop (closes the connection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from tests.support.loopback_server import LoopbackServer, QuietHandler


class FakeLLM(LoopbackServer):
    def __init__(self) -> None:
        self.mode = "ok"
        self.answer: Callable[[list[dict]], str] = lambda messages: "这是大模型的回答。"
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        self.received = threading.Event()
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                fake.requests.append({"path": self.path, **body})
                fake.headers.append(dict(self.headers))
                fake.received.set()
                mode = fake.mode
                if mode == "slow":
                    fake.release.wait(timeout=10)
                if mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "http_500":
                    self._send(500, {"error": {"message": "boom"}})
                elif mode == "malformed":
                    self._send(200, {"id": "x", "object": "chat.completion"})
                elif mode == "refusal":
                    message = {"role": "assistant", "content": None, "refusal": "I can't."}
                    self._send(200, {"choices": [{"message": message, "finish_reason": "stop"}]})
                elif mode == "empty":
                    message = {"role": "assistant", "content": "  "}
                    self._send(200, {"choices": [{"message": message, "finish_reason": "stop"}]})
                else:
                    content = fake.answer(body["messages"])
                    message = {"role": "assistant", "content": content}
                    self._send(
                        200,
                        {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
                    )

            def _send(self, status: int, payload: dict) -> None:
                self.send_body(status, json.dumps(payload, ensure_ascii=False).encode())

        super().__init__(Handler)
        self.base_url = f"{self.url}/v1"

    def stop(self) -> None:
        self.release.set()  # a request held in "slow" mode must not outlive the server
        super().stop()
