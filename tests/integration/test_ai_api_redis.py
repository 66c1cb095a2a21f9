"""AI API memory and parked answer parts in a real redis-server, shared by two app instances."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

# The AI API fixtures live in tests/ai_api/conftest.py; importing them here makes pytest
# see them (F401/F811: ruff cannot tell a fixture import from an unused one).
# ruff: noqa: F401, F811
from tests.ai_api.conftest import (
    base_settings,
    event_message,
    fake_llm,
    llm_settings,
    make_client,
    metric,
    reply_text,
    text_message,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_settings(llm_settings, redis_server):
    return replace(llm_settings, redis_url=redis_server.extra["url"])


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.extra["url"], decode_responses=True)
    yield client
    client.close()


def test_memory_lives_in_redis_and_is_shared(make_client, redis_settings, redis_client, fake_llm):
    first = make_client(redis_settings)
    second = make_client(redis_settings)  # another worker or replica
    assert first.get("/health").json()["redis"] == "up"
    reply_text(first.post("/v1/reply", json=text_message("记住我叫小明", openid="oR1")))
    assert redis_client.llen("cn:ai:mem:oR1") == 2
    assert 0 < redis_client.ttl("cn:ai:mem:oR1") <= redis_settings.memory_ttl_s
    reply_text(second.post("/v1/reply", json=text_message("我叫什么", openid="oR1")))
    contents = [m["content"] for m in fake_llm.requests[-1]["messages"]]
    assert "记住我叫小明" in contents
    assert "重新开始" in reply_text(
        second.post("/v1/reply", json=text_message("/reset", openid="oR1"))
    )
    assert redis_client.exists("cn:ai:mem:oR1") == 0


def test_memory_expires_in_redis(make_client, redis_settings, redis_client, fake_llm):
    client = make_client(replace(redis_settings, memory_ttl_s=1))
    reply_text(client.post("/v1/reply", json=text_message("第一句", openid="oR2")))
    assert redis_client.exists("cn:ai:mem:oR2") == 1
    wait_until(lambda: redis_client.exists("cn:ai:mem:oR2") == 0, 5, "Redis to expire memory")
    reply_text(client.post("/v1/reply", json=text_message("第二句", openid="oR2")))
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user"]


def test_parked_parts_in_redis_continue_on_another_instance(
    make_client, redis_settings, redis_client, fake_llm
):
    answer = "分段发送的长回答，每段不超过两千字节。" * 150
    fake_llm.answer = lambda messages: answer
    first = make_client(redis_settings)
    second = make_client(redis_settings)
    parts = [reply_text(first.post("/v1/reply", json=text_message("长问题", openid="oR3")))]
    stored = redis_client.llen("cn:ai:parts:oR3")
    assert stored >= 2
    assert 0 < redis_client.ttl("cn:ai:parts:oR3") <= redis_settings.parked_ttl_s
    while "继续" in parts[-1]:
        client = second if len(parts) % 2 else first
        parts.append(reply_text(client.post("/v1/reply", json=text_message("继续", openid="oR3"))))
    assert len(parts) == stored + 1
    assert "".join(p.split("\n\n（内容较长")[0] for p in parts) == answer
    assert redis_client.exists("cn:ai:parts:oR3") == 0


def test_unsubscribe_erases_the_user_in_redis(make_client, redis_settings, redis_client, fake_llm):
    fake_llm.answer = lambda messages: "长。" * 1500
    client = make_client(redis_settings)
    reply_text(client.post("/v1/reply", json=text_message("问题", openid="oR4")))
    assert redis_client.exists("cn:ai:mem:oR4", "cn:ai:parts:oR4") == 2
    client.post("/v1/reply", json=event_message("unsubscribe", openid="oR4"))
    assert redis_client.exists("cn:ai:mem:oR4", "cn:ai:parts:oR4") == 0
    assert redis_client.keys("cn:ai:*") == [] or all(
        not k.endswith("oR4") for k in redis_client.keys("cn:ai:*")
    )


def test_redis_loss_degrades_to_in_process(make_client, redis_settings, redis_server):
    client = make_client(redis_settings)
    reply_text(client.post("/v1/reply", json=text_message("问题", openid="oR5")))
    assert metric(client, "ai_redis_up") == 1
    redis_server.stop()
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换", openid="oR5")))
    assert content
    health = client.get("/health").json()
    assert health["redis"] == "down" and health["status"] == "degraded"
    assert metric(client, "ai_redis_up") == 0
