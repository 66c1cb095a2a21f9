"""A stand-in for api.weixin.qq.com on 127.0.0.1: access tokens and customer-service sends.

Issues numbered tokens, can expire or revoke them, can answer the next sends with an
errcode, and records every message a user would receive.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.support.loopback_server import LoopbackServer, QuietHandler, send_json


class FakeWeChatApi(LoopbackServer):
    def __init__(self, appid: str, secret: str, expires_in: int = 7200) -> None:
        self.appid = appid
        self.secret = secret
        self.expires_in = expires_in
        self.token_fetches = 0
        self.valid_tokens: set[str] = set()
        self.sent: list[dict[str, Any]] = []
        self.send_errors: list[int] = []  # errcodes to answer the next sends with
        self.sent_event = threading.Condition()
        self._lock = threading.Lock()

        super().__init__(self._handler_class())

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self.valid_tokens.clear()

    def wait_for_sent(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Block until `count` messages were sent (or the timeout); return them."""
        with self.sent_event:
            self.sent_event.wait_for(lambda: len(self.sent) >= count, timeout=timeout_s)
            return list(self.sent)

    def texts_to(self, openid: str) -> list[str]:
        return [
            m["text"]["content"]
            for m in self.sent
            if m["touser"] == openid and m["msgtype"] == "text"
        ]

    def _issue_token(self, query: dict[str, list[str]]) -> dict[str, Any]:
        if query.get("appid") != [self.appid] or query.get("secret") != [self.secret]:
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        with self._lock:
            self.token_fetches += 1
            token = f"TOKEN-{self.token_fetches}"
            self.valid_tokens = {token}  # a new token invalidates the previous one
        return {"access_token": token, "expires_in": self.expires_in}

    def _send(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if query.get("access_token", [""])[0] not in self.valid_tokens:
                return {"errcode": 40001, "errmsg": "invalid credential"}
            errcode = self.send_errors.pop(0) if self.send_errors else 0
            if errcode:  # 0 in the list lets that send through
                return {"errcode": errcode, "errmsg": "simulated"}
        with self.sent_event:
            self.sent.append(body)
            self.sent_event.notify_all()
        return {"errcode": 0, "errmsg": "ok"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/cgi-bin/token":
                    send_json(self, 200, fake._issue_token(parse_qs(url.query)))
                else:
                    send_json(self, 200, {"errcode": 404, "errmsg": "unknown"})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if url.path == "/cgi-bin/message/custom/send":
                    send_json(self, 200, fake._send(parse_qs(url.query), body))
                else:
                    send_json(self, 200, {"errcode": 404, "errmsg": "unknown"})

        return Handler
