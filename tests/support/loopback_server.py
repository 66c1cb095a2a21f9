"""The shared skeleton of our fake servers: a threaded HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self


class _Server(ThreadingHTTPServer):
    """The stdlib's listen backlog of 5 refuses a burst of the gateway's concurrent
    connections, which then passes for an AI API that is down: a real server's instead."""

    request_queue_size = 128


class LoopbackServer:
    """Serves `handler` on a free loopback port in a daemon thread, from start() to stop()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def use_tls(self, certfile: Path, keyfile: Path) -> Self:
        """Serve HTTPS with this certificate (call before start)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https"
        return self

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self._server.shutdown()
        self._server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers JSON bodies."""

    def log_message(self, *args: object) -> None:
        pass

    def send_body(self, status: int, body: bytes) -> None:
        """Answer `body` as JSON; a client that already gave up is not an error here."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def send_json(handler: BaseHTTPRequestHandler, status: int, document: object) -> None:
    """Answer `document` as UTF-8 JSON (Chinese unescaped) with its length."""
    body = json.dumps(document, ensure_ascii=False).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
