"""GET and POST /wechat as a plain WSGI application: the hot path, served without Flask.

Every message of every user of the Official Account lands here, and retries of a message
must be answered within a fraction of a millisecond of CPU. Flask's request context,
routing and hooks cost about as much as the protocol work itself, so this one path is
a small WSGI callable in front of the Flask app, which keeps every other route
(/health, /metrics, /_debug_signature). The rules are the views': the protocol modules
do the work, errors become status codes in one place (`_refusal`), and each request
gets one count and one log line (`request_log`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from . import envelope, messages, replies, request_log
from .errors import GatewayError, PayloadTooLarge
from .logs import user_hash

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .app import Services

log = logging.getLogger(__name__)

PATH = "/wechat"
_TEXT = "text/plain; charset=utf-8"
_XML = "application/xml; charset=utf-8"
_STATUS_LINES = {
    200: "200 OK",
    400: "400 BAD REQUEST",
    403: "403 FORBIDDEN",
    404: "404 NOT FOUND",
    405: "405 METHOD NOT ALLOWED",
    413: "413 REQUEST ENTITY TOO LARGE",
    500: "500 INTERNAL SERVER ERROR",
    503: "503 SERVICE UNAVAILABLE",
}
_ALLOWED = "GET, HEAD, POST"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Answer:
    """What one request sends back, and what its log line says about it."""

    __slots__ = ("body", "content_type", "fields", "headers", "status")

    def __init__(self) -> None:
        self.status = 200
        self.content_type = _TEXT
        self.body = b""
        self.headers: list[tuple[str, str]] = []
        self.fields: dict[str, Any] = {}

    def send(self, status: int, body: bytes, content_type: str = _TEXT) -> Answer:
        self.status, self.body, self.content_type = status, body, content_type
        return self


def query_params(environ: WSGIEnvironment) -> dict[str, str]:
    """The query string as a dict; a repeated name keeps its first value, as Flask's args do.

    WeChat's parameters are digits, hex and letters: only an escaped one is unquoted.
    """
    params: dict[str, str] = {}
    for pair in environ.get("QUERY_STRING", "").split("&"):
        name, _, value = pair.partition("=")
        if "%" in pair or "+" in pair:
            name, value = unquote_plus(name), unquote_plus(value)
        if name and name not in params:
            params[name] = value
    return params


def status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase.upper()}"


def client_ip_of(environ: WSGIEnvironment) -> str | None:
    """The caller's address as the Flask routes see it through ProxyFix(x_for=1).

    Exactly one proxy (Nginx) sits in front and sets X-Forwarded-For to the address it
    saw: the last entry is the one to trust. Read here rather than through ProxyFix,
    which would rewrite the whole environ of every callback for this one log field.
    """
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        last_hop = forwarded.rpartition(",")[2].strip()
        if last_hop:
            return last_hop
    return environ.get("REMOTE_ADDR")


def request_id_of(environ: WSGIEnvironment) -> str:
    """Nginx's X-Request-Id when it sent one, so both log lines of a request match.

    It travels on to the AI API's headers and into the logs, so only a plain token is
    taken; anything else (a client talking to the gateway directly) gets our own id.
    """
    given = environ.get("HTTP_X_REQUEST_ID")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(8).hex()


class WeChatEndpoint:
    """The WSGI app: /wechat handled here, every other path passed to `other_routes`."""

    def __init__(self, services: Services, other_routes: WSGIApplication) -> None:
        self.services = services
        self.other_routes = other_routes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.other_routes(environ, start_response)
        started = time.time()
        method = environ.get("REQUEST_METHOD", "GET")
        request_id = request_id_of(environ)
        answer = Answer()
        try:
            if method == "POST":
                self._callback(environ, started, request_id, answer)
            elif method in ("GET", "HEAD"):
                self._verify_url(environ, answer)
            else:
                answer.headers.append(("Allow", _ALLOWED))
                answer.send(405, b"405 method_not_allowed\n").fields["outcome"] = "rejected"
        except GatewayError as error:
            self._refusal(error, answer)
        except Exception:
            log.exception("unhandled error", extra={"event": "exception", "request_id": request_id})
            # A bug must not reach WeChat as an error page ("该公众号暂时无法提供服务").
            answer.send(200, replies.SUCCESS).fields["outcome"] = "error"
        try:
            request_log.record(
                method,
                PATH,
                answer.status,
                started,
                client_ip_of(environ),
                request_id,
                answer.fields,
            )
        except Exception:  # the user's answer is ready: the log line must not cost it
            log.exception("request log failed", extra={"event": "exception"})
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
        start_response(status_line(answer.status), headers + answer.headers)
        return [] if method == "HEAD" else [answer.body]

    def _verify_url(self, environ: WSGIEnvironment, answer: Answer) -> None:
        """WeChat's URL check: echo `echostr` when the signature matches an accepted token."""
        services = self.services
        answer.fields["mode"] = envelope.MODE_VERIFY
        echostr, tolerated = envelope.verify_url(
            query_params(environ), services.settings.account, strict=services.settings.strict_verify
        )
        services.note_tolerated(tolerated)
        answer.send(200, echostr.encode("utf-8")).fields["outcome"] = "ok"

    def _callback(
        self, environ: WSGIEnvironment, started: float, request_id: str, answer: Answer
    ) -> None:
        """A user message or event: verify, decrypt, dedup, ask the AI API, reply in time."""
        services = self.services
        settings = services.settings
        query = query_params(environ)
        answer.fields["mode"] = envelope.claimed_mode(query)
        body = _read_body(environ, settings.max_body_bytes)
        opened = envelope.open_callback(
            query,
            body,
            settings.account,
            strict=settings.strict_verify,
            max_skew_s=settings.max_clock_skew_s,
            now_s=started,
        )
        services.note_tolerated(opened.tolerated)
        fields = answer.fields
        fields["mode"] = opened.mode
        fields["token_index"] = opened.token_index
        if opened.key_index is not None:
            fields["key_index"] = opened.key_index
        message = messages.normalize(opened.fields)
        fields["msg_type"] = message["type"]
        fields["user"] = user_hash(message["openid"])
        outcome = services.delivery.answer(message, started, request_id)
        fields.update(path=outcome.path, attempt=outcome.attempt, dedup_hit=outcome.dedup_hit)
        if outcome.held:  # past WeChat's cut on purpose: it retries, and the retry gets the answer
            fields["outcome"] = "held"
            answer.headers.append(("Retry-After", "1"))
            answer.send(503, b"")
            return
        fields["outcome"] = "ok"
        sealed = None if outcome.reply is None else self._sealed(message, opened, outcome.reply)
        if sealed is None:
            answer.send(200, replies.SUCCESS)
            return
        answer.send(200, sealed, _XML)

    def _sealed(
        self, message: dict[str, Any], opened: envelope.OpenedCallback, reply: dict[str, Any]
    ) -> bytes | None:
        """The body of a passive reply: rendered, encrypted and signed once per message,
        mode, token and key, then the same bytes for every retry (`sealed_replies`);
        None when the reply cannot be rendered."""
        key = (
            message["dedup_key"],
            message["account_id"],
            opened.mode,
            opened.token_index,
            opened.key_index,
        )
        memo = self.services.sealed_replies
        sealed = memo.get(key, reply)
        if sealed is None:
            now_s = time.time()
            xml = replies.render_reply(reply, message["openid"], message["account_id"], int(now_s))
            if xml is None:
                return None
            sealed = envelope.seal_reply(xml, opened, self.services.settings.account, now_s=now_s)
            memo.put(key, reply, sealed)
        return sealed

    def _refusal(self, error: GatewayError, answer: Answer) -> None:
        """The one place the endpoint's errors become status codes, counts and log fields."""
        answer.fields["outcome"] = error.outcome
        answer.fields["error"] = error.message
        self.services.count_failure(error)
        answer.send(error.status, refusal_body(error))


def refusal_body(error: GatewayError) -> bytes:
    """A short plain-text body naming the outcome; the details are in the log line."""
    return f"{error.status} {error.outcome}\n".encode()


def _read_body(environ: WSGIEnvironment, max_bytes: int) -> bytes:
    """The request body, refused with 413 past `max_bytes` (declared or actually sent)."""
    declared = environ.get("CONTENT_LENGTH")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds {max_bytes}")
    stream = environ.get("wsgi.input")
    body = stream.read(max_bytes + 1) if stream is not None else b""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    return body
