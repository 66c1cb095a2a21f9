"""The call from the gateway to the AI API's POST /v1/reply, bounded by a deadline.

The deadline travels in the `X-Reply-Deadline-Ms` header so the AI API can answer in
time (with its knowledge base when an LLM is late); the HTTP timeout is that deadline
plus a small margin. Every failure becomes an AIError whose reason labels the metrics.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

import urllib3
from gevent import monkey
from geventhttpclient import HTTPParseError
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPSocketPoolResponse
from geventhttpclient.url import URL

from . import json_codec, metrics
from .metrics import labelled
from .replies import REPLY_BODY, xml_safe

log = logging.getLogger(__name__)

DEADLINE_HEADER = "X-Reply-Deadline-Ms"
PARTS_HEADER = "X-Reply-Parts"
REPLY_PATH = "/v1/reply"
HEALTH_PATH = "/health"
# Connections per worker: as many as requests a gevent worker holds (worker_connections),
# so a burst of slow answers never queues behind the pool; idle ones cost a socket.
POOL_SIZE = 1024
_CONNECT_TIMEOUT_S = 1.0
_READ_MARGIN_S = 0.5


class AIError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AIClient:
    """The AI API's POST /v1/reply and GET /health, over a pooled HTTP transport."""

    def __init__(self, base_url: str, transport: Transport | None = None) -> None:
        self.transport = transport or transport_for(base_url.rstrip("/"))

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
            labelled(metrics.AI_ERRORS, exc.reason).inc()
            labelled(metrics.AI_LATENCY, "error").observe(time.monotonic() - started)
            raise
        labelled(metrics.AI_LATENCY, "ok").observe(time.monotonic() - started)
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
        body = json_codec.dumps(message)
        status, data = self.transport.post(REPLY_PATH, body, headers, timeout_s + _READ_MARGIN_S)
        if status != 200:
            raise AIError("http_status", f"AI API answered HTTP {status}")
        return _validated_reply(data)

    def healthy(self, timeout_s: float = 0.5) -> bool:
        try:
            return self.transport.get(HEALTH_PATH, timeout_s) == 200
        except AIError:
            return False

    def close(self) -> None:
        self.transport.close()


class Transport(Protocol):
    """HTTP to the AI API; failures are AIError("timeout") or AIError("connection")."""

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]: ...
    def get(self, path: str, timeout_s: float) -> int: ...
    def close(self) -> None: ...


def transport_for(base_url: str, pool_size: int = POOL_SIZE) -> Transport:
    """geventhttpclient in a gevent worker (production), urllib3 in threaded processes.

    geventhttpclient parses HTTP in C and costs half the CPU of urllib3 per call, on
    the path of every fresh message; its pool is made of gevent objects, which only
    greenlets of one hub may share, so outside gevent (tests, tools) urllib3 serves.
    """
    if monkey.is_module_patched("socket"):
        return GeventTransport(base_url, pool_size)
    return Urllib3Transport(base_url, pool_size)


class GeventTransport:
    """geventhttpclient's connection pools and C response parser, under gevent.

    The request head is written here: HTTPClient's generic header handling cost a third
    of each call (45 us of CPU), and every value in this head is ours (the configured
    path, digits, a checked request id). A pool's read timeout is fixed when it is made,
    and a call must not be cut by a `gevent.Timeout` instead (that would leak the pool's
    slot), so there is one pool per whole-second timeout: the gateway uses a handful.
    """

    def __init__(self, base_url: str, pool_size: int) -> None:
        url = URL(base_url)
        self.https = url.scheme == "https"
        self.host, self.port = url.host, url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        self.pool_size = pool_size
        self._pools: dict[int, ConnectionPool] = {}

    def _pool(self, timeout_s: float) -> ConnectionPool:
        whole_s = max(1, math.ceil(timeout_s))
        pool = self._pools.get(whole_s)
        if pool is None:
            pool = self._pools[whole_s] = self._new_pool(whole_s)
        return pool

    def _new_pool(self, timeout_s: int) -> ConnectionPool:
        where = (self.host, self.port, self.host, self.port)
        if self.https:
            return SSLConnectionPool(
                *where,
                ssl_options={"server_hostname": self.host},
                size=self.pool_size,
                connection_timeout=_CONNECT_TIMEOUT_S,
                network_timeout=timeout_s,
            )
        return ConnectionPool(
            *where,
            size=self.pool_size,
            connection_timeout=_CONNECT_TIMEOUT_S,
            network_timeout=timeout_s,
        )

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        return self._request("POST", path, body, headers, timeout_s)

    def get(self, path: str, timeout_s: float) -> int:
        return self._request("GET", path, b"", {}, timeout_s)[0]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _head(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        request = self._head(method, path, body, headers) + body
        pool = self._pool(timeout_s)
        try:
            sock = self._connected(pool)
            try:
                sock.sendall(request)
            except BaseException:
                pool.release_socket(sock)
                raise
            # From here the response owns the socket: it returns it to the pool once the
            # body is read, or closes it on any error.
            response = HTTPSocketPoolResponse(sock, pool, method=method)
            try:
                return response.status_code, response.read()
            finally:
                response.release()
        except TimeoutError:
            raise AIError("timeout", f"no answer within {timeout_s:.1f}s") from None
        except (OSError, HTTPParseError) as exc:
            raise AIError("connection", type(exc).__name__) from None

    @staticmethod
    def _connected(pool: ConnectionPool) -> Any:
        """A pooled socket; an AI API that does not even accept the connection in time
        (down, or its backlog full) is a connection failure, not a slow answer."""
        try:
            return pool.get_socket()
        except TimeoutError:
            raise AIError("connection", f"no connection within {_CONNECT_TIMEOUT_S:.1f}s") from None


class Urllib3Transport:
    """urllib3 directly rather than requests: fewer layers on a per-message call."""

    def __init__(self, base_url: str, pool_size: int) -> None:
        self.base_url = base_url
        # block=False: a burst beyond the pool opens extra connections instead of queueing.
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, block=False, retries=False)

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        return self._request("POST", path, body, headers, timeout_s)

    def get(self, path: str, timeout_s: float) -> int:
        return self._request("GET", path, None, {}, timeout_s)[0]

    def close(self) -> None:
        self.pool.clear()

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> tuple[int, bytes]:
        timeout = urllib3.Timeout(connect=_CONNECT_TIMEOUT_S, read=timeout_s)
        try:
            response = self.pool.request(
                method, self.base_url + path, body=body, headers=headers, timeout=timeout
            )
        except urllib3.exceptions.ConnectTimeoutError as exc:  # refused or not accepted in time
            raise AIError("connection", type(exc).__name__) from None
        except urllib3.exceptions.TimeoutError:
            raise AIError("timeout", f"no answer within {timeout_s:.1f}s") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise AIError("connection", type(exc).__name__) from None
        return response.status, response.data


def _parsed(data: bytes) -> Any:
    try:
        return json_codec.loads(data)
    except ValueError:
        raise AIError("bad_response", "AI API answer is not JSON") from None


def _validated_reply(data: bytes) -> dict | None:
    document = _parsed(data)
    if not isinstance(document, dict) or "reply" not in document:
        raise AIError("bad_response", "AI API answer has no 'reply'")
    reply = document["reply"]
    if reply is None:
        return None
    if not isinstance(reply, dict) or reply.get("type") not in REPLY_BODY:
        raise AIError("bad_response", "AI API reply has an unknown type")
    return _checked_reply(reply)


_ARTICLE_OPTIONAL = ("description", "pic_url", "url")


def _checked_reply(reply: dict) -> dict:
    """`reply` held to the contract (docs/message-schema.md), its texts made safe for XML.

    Any AI API can answer: one that breaks the contract gets the fallback reply like any
    other bad answer, rather than failing later in splitting, rendering or a push.
    """
    kind = reply["type"]
    if kind == "news":
        articles = reply.get("articles")
        if not articles or not isinstance(articles, list):
            raise AIError("bad_response", "AI API news reply has no list of articles")
        return {**reply, "articles": [_checked_article(a) for a in articles]}
    field = REPLY_BODY[kind]
    return {**reply, field: _checked_text(reply.get(field), f"{kind} reply's {field}")}


def _checked_article(article: Any) -> dict[str, str]:
    if not isinstance(article, dict):
        raise AIError("bad_response", "AI API news article is not an object")
    checked = {"title": _checked_text(article.get("title"), "article title")}
    for key in _ARTICLE_OPTIONAL:
        if article.get(key) is not None:
            checked[key] = _checked_text(article[key], f"article {key}")
    return checked


def _checked_text(value: Any, what: str) -> str:
    """A string field of the reply, without the characters XML (and UTF-8) cannot carry."""
    if not isinstance(value, str):
        raise AIError("bad_response", f"AI API {what} is not a string")
    return xml_safe(value)
