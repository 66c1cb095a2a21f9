"""The HTTP routes, kept thin: parse the request, call the protocol and delivery code, answer."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from . import envelope, messages, replies
from .errors import GatewayError, NotFound, PayloadTooLarge
from .logs import user_hash
from .metrics_export import render_metrics
from .signature import compute_signature

log = logging.getLogger(__name__)
bp = Blueprint("wechat", __name__)


def _services():
    return current_app.extensions["celestial_nexus"]


@bp.before_app_request
def _start_clock() -> None:
    g.started = time.time()
    g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    g.log_fields = {}


@bp.get("/wechat")
def verify_url() -> Response:
    """WeChat's URL check: echo `echostr` when the signature matches an accepted token."""
    services = _services()
    g.log_fields["mode"] = envelope.MODE_VERIFY
    echostr, tolerated = envelope.verify_url(
        request.args, services.settings.account, strict=services.settings.strict_verify
    )
    services.note_tolerated(tolerated)
    g.log_fields["outcome"] = "ok"
    return Response(echostr, status=200, mimetype="text/plain")


@bp.post("/wechat")
def callback() -> Response:
    """A user message or event: verify, decrypt, dedup, ask the AI API, reply in time."""
    services = _services()
    settings = services.settings
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(f"body of {length} bytes exceeds {settings.max_body_bytes}")
    body = request.stream.read(settings.max_body_bytes + 1)
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {settings.max_body_bytes} bytes")
    opened = envelope.open_callback(
        request.args,
        body,
        settings.account,
        strict=settings.strict_verify,
        max_skew_s=settings.max_clock_skew_s,
        now_s=g.started,
    )
    services.note_tolerated(opened.tolerated)
    g.log_fields.update(mode=opened.mode, token_index=opened.token_index)
    if opened.key_index is not None:
        g.log_fields["key_index"] = opened.key_index
    message = messages.normalize(opened.fields)
    g.log_fields.update(msg_type=message["type"], user=user_hash(message["openid"]))
    outcome = services.delivery.answer(message, g.started, g.request_id)
    g.log_fields.update(path=outcome.path, attempt=outcome.attempt, dedup_hit=outcome.dedup_hit)
    if outcome.held:
        g.log_fields["outcome"] = "held"
        return Response(b"", status=503, headers={"Retry-After": "1"})
    g.log_fields["outcome"] = "ok"
    xml = None
    if outcome.reply is not None:
        xml = replies.render_reply(
            outcome.reply, message["openid"], message["account_id"], int(time.time())
        )
    if xml is None:
        return Response(replies.SUCCESS, status=200, mimetype="text/plain")
    body = envelope.seal_reply(xml, opened, settings.account, now_s=time.time())
    return Response(body, status=200, mimetype="application/xml")


@bp.get("/health")
def health() -> Response:
    """200 while the process serves; `status` says ok or degraded, per component too."""
    return jsonify(_services().health())


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    g.log_fields["quiet"] = True
    return Response(render_metrics(), status=200, mimetype=CONTENT_TYPE_LATEST)


@bp.get("/_debug_signature")
def debug_signature() -> Response:
    """Help an operator whose verification fails: the signatures we expect, never the token.

    `signature` covers token, timestamp and nonce (URL check, every callback);
    `msg_signature` also covers a candidate `Encrypt` (safe mode) or `echostr` (WeCom).
    Pass the values WeChat sent (`signature`, `msg_signature`) to see which token matches.
    """
    services = _services()
    if not services.settings.debug_endpoints:
        raise NotFound("debug endpoints are off (WECHAT_DEBUG_ENDPOINTS=0)")
    args = request.args
    timestamp, nonce = args.get("timestamp", ""), args.get("nonce", "")
    candidate = args.get("encrypt") or args.get("Encrypt") or args.get("echostr")
    tokens = []
    for index, token in enumerate(services.settings.account.accepted_tokens):
        entry = {"token_index": index, "signature": compute_signature(token, timestamp, nonce)}
        if candidate:
            entry["msg_signature"] = compute_signature(token, timestamp, nonce, candidate)
        tokens.append(entry)
    matches = {
        name: next((t["token_index"] for t in tokens if t.get(name) == args[name].lower()), None)
        for name in ("signature", "msg_signature")
        if args.get(name)
    }
    skew_s = int(time.time()) - int(timestamp) if timestamp.isdigit() else None
    return jsonify(
        {
            "timestamp": timestamp,
            "nonce": nonce,
            "signed_candidate": "encrypt/echostr" if candidate else None,
            "expected": tokens,
            "matches_token_index": matches,
            "server_time": int(time.time()),
            "clock_skew_s": skew_s,
            "max_clock_skew_s": services.settings.max_clock_skew_s,
        }
    )


def handle_gateway_error(error: GatewayError) -> Response:
    """The one place errors become status codes, counts and log lines."""
    g.log_fields["outcome"] = error.outcome
    g.log_fields["error"] = error.message
    _services().count_failure(error)
    return Response(f"{error.status} {error.outcome}\n", status=error.status, mimetype="text/plain")


def handle_unexpected(error: Exception) -> Response:
    """A bug must not reach WeChat as an error page: log it, count it, answer `success`."""
    log.exception(
        "unhandled error", extra={"event": "exception", "request_id": g.get("request_id")}
    )
    g.log_fields["outcome"] = "error"
    return Response(replies.SUCCESS, status=200, mimetype="text/plain")
