"""create_app(settings=None): wires settings, stores, clients and routes; nothing else."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from . import logs, metrics, request_log, views
from .ai_client import AIClient
from .config import Settings, redacted_url
from .dedup import JobStore, build_store
from .delivery import CustomSender, Delivery
from .endpoint import WeChatEndpoint
from .errors import GatewayError
from .sealed_replies import SealedReplies

log = logging.getLogger("wechat_gateway")
_HEALTH_CACHE_S = 2.0


@dataclass
class Services:
    """Everything a request needs, built once per worker process."""

    settings: Settings
    store: JobStore
    ai: AIClient | None
    delivery: Delivery
    sealed_replies: SealedReplies
    _health: tuple[float, dict] = field(default=(0.0, {}))

    def note_tolerated(self, failures: list[GatewayError]) -> None:
        """STRICT_WECHAT_VERIFY=0: log and count the failure, let the request through."""
        for failure in failures:
            self.count_failure(failure)
            log.warning(
                "verification failed but STRICT_WECHAT_VERIFY=0 lets it through: %s",
                failure.message,
                extra={"event": "verify_tolerated", "reason": failure.reason},
            )

    def count_failure(self, error: GatewayError) -> None:
        if error.outcome in ("bad_signature", "stale_timestamp"):
            metrics.SIGNATURE_FAILURES.labels(reason=error.reason).inc()
            log.warning(
                "signature check failed: %s",
                error.message,
                extra={"event": "signature_fail", "reason": error.reason},
            )
        elif error.outcome == "decrypt_failed":
            metrics.DECRYPT_FAILURES.labels(reason=error.reason).inc()
            log.warning(
                "decryption failed: %s",
                error.message,
                extra={"event": "decrypt_fail", "reason": error.reason},
            )

    def health(self) -> dict:
        """Component states, cached briefly so a busy health checker costs nothing."""
        checked_at, cached = self._health
        if time.monotonic() - checked_at < _HEALTH_CACHE_S:
            return cached
        if not self.settings.redis_url:
            redis_state = "disabled"
        else:
            redis_state = "ok" if self.store.ping() else "down"
        ai_state = "ok" if self.ai is not None and self.ai.healthy() else "down"
        components = {"redis": redis_state, "ai_api": ai_state, "dedup_store": self.store.name}
        overall = "ok" if redis_state != "down" and ai_state == "ok" else "degraded"
        # Flat keys for scripts (`.redis`), the same under `components` for dashboards.
        document = {
            "status": overall,
            **components,
            "components": components,
            "slow_reply_mode": self.settings.slow_reply_mode,
        }
        self._health = (time.monotonic(), document)
        return document


def create_app(settings: Settings | None = None, *, sender: CustomSender | None = None) -> Flask:
    """The gateway's Flask app. Without `settings` they are read from the environment.

    `sender` replaces the customer-service client (tests pass a recording one).
    """
    settings = settings or Settings.from_env(os.environ)
    logs.configure(settings.log_level, settings.log_format)
    app = Flask(__name__)
    metrics.create_known_series()
    store = build_store(settings.redis_url, settings.dedup_max)
    ai = AIClient(settings.ai_api_url) if settings.ai_api_url else None
    if sender is None and settings.slow_reply_mode == "custom":
        from .customer_service import build_sender

        sender = build_sender(settings)
    delivery = Delivery(settings, store, ai, sender)
    services = Services(settings, store, ai, delivery, SealedReplies(settings.dedup_max))
    app.extensions["celestial_nexus"] = services
    app.register_blueprint(views.bp)
    app.register_error_handler(GatewayError, views.handle_gateway_error)
    app.register_error_handler(HTTPException, lambda e: e)
    app.register_error_handler(Exception, views.handle_unexpected)
    app.after_request(_log_and_count)
    # /wechat is served ahead of Flask (endpoint.py), which reads the client address the
    # same way. Exactly one proxy (Nginx) sits in front: trust one hop of X-Forwarded-*.
    app.wsgi_app = WeChatEndpoint(  # type: ignore[method-assign]
        services, ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
    )
    _log_startup(settings)
    return app


def _log_and_count(response):
    """One structured line per request of the Flask routes, as /wechat gets one."""
    request_log.record(
        request.method,
        request.path,
        response.status_code,
        g.get("started", time.time()),
        request.remote_addr,
        g.get("request_id", ""),
        g.get("log_fields", {}),
    )
    return response


def _log_startup(settings: Settings) -> None:
    account = settings.account
    log.info(
        "gateway starting",
        extra={
            "event": "startup",
            "appid": account.appid,
            "accepted_tokens": len(account.accepted_tokens),
            "aes_keys": len(account.aes_keys),
            "strict": settings.strict_verify,
            "dedup": "redis" if settings.redis_url else "local",
            "ai_api_url": redacted_url(settings.ai_api_url) if settings.ai_api_url else None,
            "slow_reply_mode": settings.slow_reply_mode,
            "deploy_env": settings.deploy_env,
        },
    )
    if settings.uses_development_defaults:
        log.warning(
            "!!! USING THE DEVELOPMENT TOKEN/AES KEY FROM .env.example: fine on a laptop, "
            "never in production (set WECHAT_TOKEN and WECHAT_ENCODING_AES_KEY) !!!",
            extra={"event": "development_defaults"},
        )
    if not settings.strict_verify:
        log.warning(
            "STRICT_WECHAT_VERIFY=0: failed signatures are let through (development only)",
            extra={"event": "strict_off"},
        )
