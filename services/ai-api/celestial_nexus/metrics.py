"""Every Prometheus metric of the AI API, declared once.

Uvicorn runs one worker by default. With several workers, set PROMETHEUS_MULTIPROC_DIR to
an empty directory before start-up: /metrics then aggregates every worker's files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# The knowledge base answers in milliseconds; an LLM takes seconds, up to the deadline
# (about 4.5 s per WeChat attempt, about 14 s in slow-reply delivery).
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    4.0,
    5.0,
    8.0,
    12.0,
    15.0,
    30.0,
)

REQUESTS = Counter(
    "ai_requests_total",
    "POST /v1/reply requests, by message type (text, voice, image, link, event, ..., other, "
    "invalid) and outcome (answered, no_answer, no_reply, invalid, error).",
    ["msg_type", "outcome"],
)
ANSWER_LATENCY = Histogram(
    "ai_answer_latency_seconds",
    "Time to produce a reply, by the answerer that produced it (kb, llm, command, event, static).",
    ["answerer"],
    buckets=LATENCY_BUCKETS_S,
)
LLM_ERRORS = Counter(
    "ai_llm_errors_total",
    "Failed LLM calls, by reason (timeout, http_error, malformed, refusal, connection).",
    ["reason"],
)
LLM_FALLBACKS = Counter(
    "ai_llm_fallbacks_total",
    "Questions answered from the knowledge base although an LLM is configured, by reason "
    "(an LLM error reason, or deadline: too little time left to ask the LLM).",
    ["reason"],
)
KB_PASSAGES = Gauge(
    "ai_kb_passages",
    "Passages in the loaded knowledge base.",
    multiprocess_mode="livemax",
)
KB_RELOADS = Counter(
    "ai_kb_reloads_total",
    "Knowledge-base loads, by result (ok, error); the first load at start-up counts as ok.",
    ["result"],
)
REDIS_UP = Gauge(
    "ai_redis_up",
    "1 when per-user state is kept in Redis, 0 while Redis is unreachable and the in-process "
    "store is used; absent when REDIS_URL is not set.",
    multiprocess_mode="livemin",
    registry=None,  # registered by expose_redis_up() only when Redis is configured
)


def create_known_series(llm_error_reasons: Iterable[str]) -> None:
    """Touch the series of failures, so that the dashboard's panels show 0 rather than no
    data before the first LLM failure (or with no LLM at all) or knowledge-base error."""
    for reason in llm_error_reasons:
        LLM_ERRORS.labels(reason)
        LLM_FALLBACKS.labels(reason)
    LLM_FALLBACKS.labels("deadline")
    KB_RELOADS.labels("error")


def expose_redis_up() -> None:
    """Export ai_redis_up (once per process): only a service with REDIS_URL has it."""
    with contextlib.suppress(ValueError):  # already registered by an earlier app
        REGISTRY.register(REDIS_UP)


def render() -> tuple[bytes, str]:
    """The exposition text, aggregated over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
