"""Every Prometheus metric of the gateway, declared once.

Gunicorn runs several workers, so the values live in prometheus-client's multiprocess
mode: gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before any
worker imports this module, and /metrics aggregates every worker's files.
"""

import functools

from prometheus_client import Counter, Gauge, Histogram

# 5 ms .. 5 s resolved finely (WeChat's cut is 5 s, the latency alert line is 1.5 s);
# 7.5 s and 15 s catch requests slower than WeChat waits.
REQUEST_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    4.5,
    5.0,
    7.5,
    15.0,
)
ANSWER_BUCKETS_S = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    4.5,
    6.0,
    8.0,
    10.0,
    12.0,
    15.0,
    30.0,
    60.0,
)

REQUESTS = Counter(
    "wechat_requests_total",
    "Callbacks answered, by HTTP method, message mode (verify/plain/compat/safe) and outcome.",
    ["method", "mode", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "wechat_request_latency_seconds",
    "Time from receiving a callback to answering it; attempts held on purpose past "
    "WeChat's cut (outcome held) are counted in wechat_requests_total, not timed here.",
    ["method"],
    buckets=REQUEST_BUCKETS_S,
)
SIGNATURE_FAILURES = Counter(
    "wechat_signature_fail_total",
    "Callbacks rejected by signature checks, by reason "
    "(bad_signature, bad_msg_signature, stale_timestamp).",
    ["reason"],
)
DECRYPT_FAILURES = Counter(
    "wechat_decrypt_fail_total",
    "Encrypted callbacks that failed to decrypt, by reason (base64, padding, length, appid, xml).",
    ["reason"],
)
DEDUP_HITS = Counter(
    "wechat_dedup_hits_total",
    "Callbacks recognised as a retry of a message already claimed, by store (redis/local).",
    ["store"],
)
AI_LATENCY = Histogram(
    "wechat_ai_request_latency_seconds",
    "Duration of calls from the gateway to the AI API, by outcome (ok/error).",
    ["outcome"],
    buckets=ANSWER_BUCKETS_S,
)
AI_ERRORS = Counter(
    "wechat_ai_errors_total",
    "Failed calls to the AI API, by reason (timeout, connection, http_status, bad_response).",
    ["reason"],
)
FALLBACK_REPLIES = Counter(
    "wechat_fallback_replies_total",
    "Users answered with WECHAT_FALLBACK_REPLY because the AI API failed.",
)
REPLIES = Counter(
    "wechat_replies_total",
    "Answers delivered to users, by path "
    "(first_attempt, retry, placeholder, parked, custom, fallback, none).",
    ["path"],
)
DELIVERY_ATTEMPTS = Counter(
    "wechat_delivery_attempts_total",
    "Callback deliveries by WeChat attempt number (1, 2, 3; 4+ past WeChat's usual three).",
    ["attempt"],
)
TIME_TO_ANSWER = Histogram(
    "wechat_time_to_answer_seconds",
    "Time from the first attempt of a message to its answer being handed to WeChat.",
    ["path"],
    buckets=ANSWER_BUCKETS_S,
)
CUSTOM_SENDS = Counter(
    "wechat_custom_send_total",
    "Customer-service API sends, by result (ok, retried, failed, not_retryable).",
    ["result"],
)
ACCESS_TOKEN_REFRESHES = Counter(
    "wechat_access_token_refresh_total",
    "access_token fetches from the WeChat API, by result (ok, error).",
    ["result"],
)


# Every label value the code can produce, created at start-up so dashboards and alert
# ratios show 0 rather than "No data" before the first event of each kind.
KNOWN_LABELS = {
    SIGNATURE_FAILURES: [("bad_signature",), ("bad_msg_signature",), ("stale_timestamp",)],
    DECRYPT_FAILURES: [("base64",), ("padding",), ("length",), ("appid",), ("xml",)],
    DEDUP_HITS: [("redis",), ("local",)],
    AI_ERRORS: [("timeout",), ("connection",), ("http_status",), ("bad_response",)],
    REPLIES: [
        (path,)
        for path in (
            "first_attempt",
            "retry",
            "placeholder",
            "parked",
            "custom",
            "fallback",
            "none",
        )
    ],
    DELIVERY_ATTEMPTS: [("1",), ("2",), ("3",), ("4+",)],
    CUSTOM_SENDS: [("ok",), ("retried",), ("failed",), ("not_retryable",)],
    ACCESS_TOKEN_REFRESHES: [("ok",), ("error",)],
}


@functools.cache
def labelled(metric, *label_values: str):
    """`metric.labels(*label_values)`, looked up once: each lookup takes a lock, and the
    hot path updates six labelled series per callback. Label values are bounded sets."""
    return metric.labels(*label_values)


def create_known_series() -> None:
    """Touch every known label set (idempotent; each worker process calls it once)."""
    for metric, label_sets in KNOWN_LABELS.items():
        for labels in label_sets:
            metric.labels(*labels)
    FALLBACK_REPLIES.inc(0)


REDIS_UP_NAME = "wechat_redis_up"


@functools.cache
def redis_up() -> Gauge:
    """`wechat_redis_up`, declared by the first store that uses Redis. An unlabelled
    multiprocess gauge writes its 0 the moment it is declared, and a gateway without
    Redis would then raise the RedisUnreachable alert for ever."""
    return Gauge(
        REDIS_UP_NAME,
        "1 when the gateway reaches Redis, 0 when it fell back to the in-process store "
        "(minimum across live workers); absent when Redis is not configured.",
        multiprocess_mode="livemin",
    )
