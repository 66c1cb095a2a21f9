"""An instant AI API for the throughput benchmark: POST /v1/reply answers a constant at once.

A bare asyncio protocol (no framework, no JSON parsing) so that the AI hop costs the
gateway its real HTTP round trip while the responder itself takes as little of the
shared CPU as possible. GET /health answers 200; GET /stats returns the number of
/v1/reply calls so far, which tells the benchmark whether the AI was really called (fresh
callbacks) or not (duplicates answered from the dedup store).

Run: .venv/bin/python -m bench.responder PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

REPLY_TEXT = "你好，这是基准测试的即时回答。"
_REPLY = json.dumps({"reply": {"type": "text", "content": REPLY_TEXT}}, ensure_ascii=False)
_HEALTH = b'{"status": "ok"}'


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


REPLY_RESPONSE = _response(_REPLY.encode())
HEALTH_RESPONSE = _response(_HEALTH)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class Counter:
    replies = 0


class ResponderProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: all that requests sends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            method, _, rest = head.partition(" ")
            path = rest.partition(" ")[0]
            self.transport.write(self._answer(method, path))  # type: ignore[attr-defined]

    @staticmethod
    def _answer(method: str, path: str) -> bytes:
        if method == "POST" and path == "/v1/reply":
            Counter.replies += 1
            return REPLY_RESPONSE
        if method == "GET" and path == "/health":
            return HEALTH_RESPONSE
        if method == "GET" and path == "/stats":
            return _response(json.dumps({"replies": Counter.replies}).encode())
        return NOT_FOUND


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ResponderProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
