"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for the LLM tests.

It records every request and answers according to `mode`: ok, slow (holds the request
until released), http_500, malformed, refusal, empty, drop (closes the connection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    def __init__(self) -> None:
        self.mode = "ok"
        self.answer: Callable[[list[dict]], str] = lambda messages: "这是大模型的回答。"
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        self.received = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

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
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
