"""The operator routes, kept thin: /health, /metrics and /_debug_signature.

/wechat itself, the hot path, is served without Flask by `endpoint.WeChatEndpoint`.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from . import replies
from .endpoint import refusal_body, request_id_of
from .errors import GatewayError, NotFound
from .metrics_export import render_metrics
from .signature import compute_signature

log = logging.getLogger(__name__)
bp = Blueprint("wechat", __name__)


def _services():
    return current_app.extensions["celestial_nexus"]


@bp.before_app_request
def _start_clock() -> None:
    g.started = time.time()
    g.request_id = request_id_of(request.environ)
    g.log_fields = {}


@bp.get("/health")
def health() -> Response:
    """200 while the process serves; `status` says ok or degraded, per component too."""
    return jsonify(_services().health())


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    return Response(render_metrics(), status=200, content_type=CONTENT_TYPE_LATEST)


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
    # isascii: str.isdigit() also holds for '²', which int() refuses.
    skew_s = (
        int(time.time()) - int(timestamp) if timestamp.isascii() and timestamp.isdigit() else None
    )
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
    """The Flask routes' errors become status codes, counts and log lines, as /wechat's do."""
    g.log_fields["outcome"] = error.outcome
    g.log_fields["error"] = error.message
    _services().count_failure(error)
    return Response(refusal_body(error), status=error.status, mimetype="text/plain")


def handle_unexpected(error: Exception) -> Response:
    """A bug must not reach WeChat as an error page: log it, count it, answer `success`."""
    log.exception(
        "unhandled error", extra={"event": "exception", "request_id": g.get("request_id")}
    )
    g.log_fields["outcome"] = "error"
    return Response(replies.SUCCESS, status=200, mimetype="text/plain")
