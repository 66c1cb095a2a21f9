"""The FastAPI app: create_app(settings) wires the answerer, the stores and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from . import metrics
from .answerer import KNOWN_TYPES, Answerer
from .config import ConfigError, Settings, url_for_logs
from .kb import KnowledgeFileError, LiveKnowledgeBase
from .llm import ERROR_REASONS, LLMClient, LLMConfig
from .logs import configure_logging
from .replies import load_replies
from .schemas import NormalizedMessage, ReplyEnvelope
from .store import LocalStore, RedisStore, ResilientStore

log = logging.getLogger(__name__)

DEADLINE_HEADER = "X-Reply-Deadline-Ms"
MAX_DEADLINE_MS = 60_000


def _deadline_ms(raw: str | None, default_ms: int) -> int:
    """The gateway's deadline header, or our default when it is absent or not a number."""
    if raw is None:
        return default_ms
    try:
        value = int(raw.strip())
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", DEADLINE_HEADER, raw[:20])
        return default_ms
    return max(0, min(value, MAX_DEADLINE_MS))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from `settings` (from the environment when None); start-up fails fast."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.kb_dir.is_dir():
        raise ConfigError(f"Config 'KB_DIR' is {str(settings.kb_dir)!r}, which is not a folder.")
    texts = load_replies(settings.replies_file)
    metrics.create_known_series(ERROR_REASONS)

    def on_reload(result: str, passages: int) -> None:
        metrics.KB_RELOADS.labels(result).inc()
        metrics.KB_PASSAGES.set(passages)

    try:
        kb = LiveKnowledgeBase(settings.kb_dir, on_reload=on_reload)
    except KnowledgeFileError as exc:
        raise ConfigError(f"Config 'KB_DIR': {exc}") from None
    log.info("knowledge base loaded: %d passages from %s", len(kb.current), settings.kb_dir)

    def on_redis_state(state: str) -> None:
        if state != "disabled":
            metrics.REDIS_UP.set(1 if state == "up" else 0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Network clients belong to the running event loop, so they are made here.
        redis_store = None
        if settings.redis_url:
            redis_store = RedisStore.from_url(settings.redis_url)
            metrics.expose_redis_up()
        store = ResilientStore(
            redis_store, LocalStore(settings.local_store_max_users), on_state=on_redis_state
        )
        llm = None
        if settings.llm_configured:
            llm = LLMClient(
                LLMConfig(
                    base_url=settings.llm_base_url,
                    api_key=settings.llm_api_key,
                    model=settings.llm_model,
                    timeout_s=settings.llm_timeout_s,
                    max_tokens=settings.llm_max_tokens,
                    temperature=settings.llm_temperature,
                )
            )
        app.state.store = store
        answerer = Answerer(settings, kb, texts, store, llm)
        app.state.answerer = answerer
        if redis_store is not None:
            await store.check()
        log.info(
            "AI API ready: llm=%s redis=%s",
            f"{settings.llm_model} at {url_for_logs(settings.llm_base_url)}" if llm else "off",
            store.state,
        )
        watcher = asyncio.create_task(_watch_kb(kb, settings.kb_reload_interval_s))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await answerer.finish_writes()
            if llm is not None:
                await llm.close()
            await store.close()

    app = FastAPI(
        title="Celestial Nexus AI API",
        version="1",
        summary="Answers WeChat users for the gateway: knowledge base, LLM, commands, events.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.kb = kb

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REQUESTS.labels("invalid", "invalid").inc()
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        log.warning(
            "rejected an invalid message: %s",
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors),
        )
        return JSONResponse(
            status_code=422,
            content={
                "detail": errors,
                "message": "the body does not match the normalized "
                "message schema (docs/message-schema.md)",
            },
        )

    @app.post("/v1/reply", response_model=ReplyEnvelope, response_model_exclude_none=True)
    async def reply(
        message: NormalizedMessage,
        request: Request,
        x_reply_deadline_ms: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
        x_reply_parts: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """The reply to one normalized WeChat message (docs/message-schema.md)."""
        started = time.monotonic()
        deadline_at = started + _deadline_ms(x_reply_deadline_ms, settings.reply_deadline_ms) / 1000
        msg_type = message.type if message.type in KNOWN_TYPES else "other"
        answerer: Answerer = request.app.state.answerer
        log.debug("message from %s: %r", message.openid, message.content or message.event)
        try:
            whole = (x_reply_parts or "").strip().lower() == "all"
            answer = await answerer.answer(message, deadline_at, whole=whole)
        except Exception:
            metrics.REQUESTS.labels(msg_type, "error").inc()
            log.exception("failed to answer", extra={"request_id": x_request_id})
            raise
        elapsed = time.monotonic() - started
        metrics.ANSWER_LATENCY.labels(answer.answerer).observe(elapsed)
        metrics.REQUESTS.labels(msg_type, answer.outcome).inc()
        log.info(
            "answered %s with %s (%s) in %.0f ms",
            msg_type,
            answer.answerer,
            answer.outcome,
            elapsed * 1000,
            extra={
                "request_id": x_request_id,
                "msg_type": msg_type,
                "answerer": answer.answerer,
                "outcome": answer.outcome,
                "duration_ms": round(elapsed * 1000, 1),
            },
        )
        body = {"reply": answer.reply.model_dump(exclude_none=True) if answer.reply else None}
        return JSONResponse(body)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """What the service runs with. Always 200 while serving; `status` says degraded when the
        knowledge base is empty or Redis is unreachable (the in-process store is in use)."""
        store: ResilientStore = request.app.state.store
        passages = len(kb.current)
        redis_state = await store.check()
        body = {
            "status": "ok" if passages and redis_state != "down" else "degraded",
            "kb": {"loaded": passages > 0, "passages": passages, "dir": str(settings.kb_dir)},
            "llm": {"configured": settings.llm_configured, "model": settings.llm_model or None},
            "redis": redis_state,
        }
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        data, content_type = metrics.render()
        return Response(content=data, media_type=content_type)

    return app


async def _watch_kb(kb: LiveKnowledgeBase, interval_s: float) -> None:
    """Reload the knowledge base when its files change (off the event loop: big KBs take time)."""
    while True:
        await asyncio.sleep(max(interval_s, 0.05))
        try:
            await asyncio.to_thread(kb.reload_if_changed)
        except Exception:
            log.exception("knowledge-base watcher failed; retrying")


app = create_app()
