"""The customer-service client against a fake WeChat API, with the token shared in real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from prometheus_client import REGISTRY

from tests.support.fake_wechat_api import FakeWeChatApi
from tests.support.processes import free_port
from wechat_gateway.customer_service import (
    MORE_HINT,
    PART_BYTES,
    AccessTokenProvider,
    CustomServiceSender,
)
from wechat_gateway.splitting import split_utf8

pytestmark = pytest.mark.integration
APPID, SECRET = "wxAPP", "secret-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sends(result: str) -> float:
    return REGISTRY.get_sample_value("wechat_custom_send_total", {"result": result}) or 0.0


@pytest.fixture
def api():
    fake = FakeWeChatApi(APPID, SECRET).start()
    yield fake
    fake.stop()


@pytest.fixture
def redis_client(redis_server):
    return redis.Redis.from_url(redis_server.extra["url"])


def provider(api, redis_client, clock=None) -> AccessTokenProvider:
    return AccessTokenProvider(api.url, APPID, SECRET, redis_client, clock=clock or Clock())


def sender(tokens) -> CustomServiceSender:
    return CustomServiceSender(tokens, sleep=lambda s: None)


def test_two_replicas_fetch_the_token_once(api, redis_client):
    replicas = [provider(api, redis_client) for _ in range(2)]
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda i: replicas[i % 2].token(), range(16)))
    assert set(tokens) == {"TOKEN-1"} and api.token_fetches == 1


def test_a_replica_that_read_the_cache_too_early_does_not_fetch_again(api, redis_client):
    """The race behind a second fetch: A finds no token, B fetches and stores one and
    releases the lock, then A takes the lock. A must use B's token."""
    late, early = provider(api, redis_client), provider(api, redis_client)
    assert early.token() == "TOKEN-1"
    assert late._refresh(stale=None) == "TOKEN-1" and api.token_fetches == 1


def test_token_refreshed_before_it_expires(api, redis_client):
    clock = Clock()
    tokens = provider(api, redis_client, clock)
    assert tokens.token() == "TOKEN-1"
    clock.now += 7200 - 400  # still 400 s left: keep it
    assert tokens.token() == "TOKEN-1"
    clock.now += 200  # 200 s left, inside the 5-minute margin: refresh
    assert tokens.token() == "TOKEN-2" and api.token_fetches == 2


def test_invalid_token_error_refreshes_and_retries_once(api, redis_client):
    tokens = provider(api, redis_client)
    tokens.token()
    api.revoke_all_tokens()  # e.g. someone fetched a token elsewhere
    assert sender(tokens).deliver("oU", {"type": "text", "content": "hello"}) is None
    assert api.token_fetches == 2 and api.texts_to("oU") == ["hello"]


def test_long_answers_go_out_as_several_messages(api, redis_client):
    text = "这是一段很长的回答。" * 250  # 7500 bytes
    assert (
        sender(provider(api, redis_client)).deliver("oLong", {"type": "text", "content": text})
        is None
    )
    parts = api.texts_to("oLong")
    assert len(parts) == 4 and "".join(parts) == text
    assert all(len(p.encode()) <= 2000 for p in parts)


def test_past_the_quota_the_rest_comes_back_to_be_parked(api, redis_client):
    """Five messages per 48 h: four parts and a 继续 hint go out, the rest is returned
    marked as a continuation (the gateway parks it for the user's 继续) instead of being
    dropped."""
    text = "这是一段更长的回答。" * 500  # 15000 bytes: 8 parts
    parts = split_utf8(text, PART_BYTES)
    unsent = sender(provider(api, redis_client)).deliver(
        "oQuota", {"type": "text", "content": text}
    )
    sent = api.texts_to("oQuota")
    assert sent == [*parts[:4], MORE_HINT]
    assert unsent == {"type": "text", "content": "".join(parts[4:]), "continuation": True}


@pytest.mark.parametrize("errcode", [48001, 45015, 45047])
def test_errors_retrying_cannot_fix_are_not_retried(api, redis_client, errcode):
    before = sends("not_retryable")
    api.send_errors = [errcode, 0]
    reply = {"type": "text", "content": "parked instead"}
    assert sender(provider(api, redis_client)).deliver("oNo", reply) == reply
    assert api.send_errors == [0]  # exactly one call: no retry
    assert sends("not_retryable") == before + 1


def test_transient_errors_are_retried_with_backoff(api, redis_client):
    before_ok, before_retried = sends("ok"), sends("retried")
    api.send_errors = [-1, 45009]
    delays: list[float] = []
    client = CustomServiceSender(provider(api, redis_client), sleep=delays.append)
    assert client.deliver("oRetry", {"type": "text", "content": "eventually"}) is None
    assert delays == [0.5, 1.0] and api.texts_to("oRetry") == ["eventually"]
    assert sends("ok") == before_ok + 1 and sends("retried") == before_retried + 2


def test_persistent_failure_is_counted_and_returned_for_parking(api, redis_client):
    before = sends("failed")
    api.send_errors = [-1] * 4
    reply = {"type": "text", "content": "never sent"}
    assert sender(provider(api, redis_client)).deliver("oFail", reply) == reply
    assert sends("failed") == before + 1 and api.sent == []


def test_half_sent_long_answer_parks_only_the_rest(api, redis_client):
    text = "甲" * 700 + "乙" * 700  # 4200 bytes: three messages
    api.send_errors = [0, 45047]  # the first goes out, the second is refused
    unsent = sender(provider(api, redis_client)).deliver("oHalf", {"type": "text", "content": text})
    sent = api.texts_to("oHalf")
    assert len(sent) == 1 and sent[0] + unsent["content"] == text


def test_a_redis_that_is_down_does_not_stop_the_token(api):
    """The refresh lock lives in Redis; with Redis unreachable this process fetches alone."""
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    tokens = provider(api, unreachable)
    assert tokens.token() == "TOKEN-1" and tokens.token() == "TOKEN-1"
    assert api.token_fetches == 1
