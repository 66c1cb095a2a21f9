"""The LLM path through the real httpx client against a fake OpenAI-compatible server.

Covers the prompt (system prompt, retrieved passages, memory), memory across requests and
its expiry, 清除记忆, the fallbacks to the knowledge base (slow, 500, malformed, refusal,
connection) with their counters, and the reply deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from celestial_nexus.answerer import Answerer
from celestial_nexus.config import Settings
from celestial_nexus.kb import LiveKnowledgeBase
from celestial_nexus.llm import LLMClient, LLMConfig, LLMError
from celestial_nexus.memory import memory_key, parked_key
from celestial_nexus.replies import load_replies
from celestial_nexus.schemas import MAX_QUESTION_CHARS, NormalizedMessage
from celestial_nexus.store import LocalStore
from tests.ai_api.conftest import metric, reply_text, text_message


def test_prompt_carries_system_prompt_passages_and_question(make_client, llm_settings, fake_llm):
    settings = replace(llm_settings, llm_system_prompt="你是测试助手。")
    client = make_client(settings)
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert content == "这是大模型的回答。"
    request = fake_llm.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "fake-model"
    system = request["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("你是测试助手。")
    assert "如何更换 Token（令牌轮换）" in system["content"]  # the retrieved passage
    assert "WECHAT_ACCEPT_TOKENS" in system["content"]
    assert request["messages"][-1] == {"role": "user", "content": "令牌怎么轮换"}
    assert fake_llm.headers[-1]["Authorization"] == "Bearer sk-test-secret-key-123"
    assert metric(client, "ai_answer_latency_seconds_count", answerer="llm") >= 1


def test_memory_survives_across_requests_and_reset_clears_it(make_client, llm_settings, fake_llm):
    fake_llm.answer = lambda messages: f"第{len(messages)}条消息的回答"
    client = make_client(replace(llm_settings, memory_turns=2))
    for question in ("问题一", "问题二", "问题三"):
        reply_text(client.post("/v1/reply", json=text_message(question)))
    messages = fake_llm.requests[-1]["messages"]
    assert [m["content"] for m in messages[1:]] == [
        "问题一",
        "第2条消息的回答",
        "问题二",
        "第4条消息的回答",
        "问题三",
    ]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    reply_text(client.post("/v1/reply", json=text_message("问题四")))  # only 2 turns kept
    messages = fake_llm.requests[-1]["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["问题二", "问题三", "问题四"]

    assert "重新开始" in reply_text(client.post("/v1/reply", json=text_message("清除记忆")))
    reply_text(client.post("/v1/reply", json=text_message("问题五")))
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user"]


def test_memory_is_per_user(make_client, llm_settings, fake_llm):
    client = make_client(llm_settings)
    reply_text(client.post("/v1/reply", json=text_message("我是甲", openid="oA")))
    reply_text(client.post("/v1/reply", json=text_message("我是乙", openid="oB")))
    contents = [m["content"] for m in fake_llm.requests[-1]["messages"]]
    assert "我是甲" not in contents


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answerer_over(settings, store, llm) -> Answerer:
    """An Answerer on the test knowledge base and replies, with `store` and `llm`."""
    return Answerer(
        settings,
        LiveKnowledgeBase(settings.kb_dir),
        load_replies(settings.replies_file),
        store,
        llm,
    )


@pytest.fixture
def clock_answerer(llm_settings: Settings):
    """An Answerer on the real LLM client with an in-process store on a fake clock."""
    clock = FakeClock()
    store = LocalStore(100, clock=clock)
    llm = LLMClient(
        LLMConfig(
            llm_settings.llm_base_url,
            llm_settings.llm_api_key,
            llm_settings.llm_model,
            2.0,
            100,
            0.0,
        )
    )
    yield answerer_over(replace(llm_settings, memory_ttl_s=60), store, llm), clock
    asyncio.run(llm.close())


def _ask(answerer: Answerer, text: str) -> str:
    msg = NormalizedMessage.model_validate(text_message(text))

    async def run() -> str:
        answer = await answerer.answer(msg, time.monotonic() + 5)
        return answer.reply.content

    return asyncio.run(run())


def test_memory_expires_after_its_ttl(clock_answerer, fake_llm):
    answerer, clock = clock_answerer
    _ask(answerer, "第一个问题")
    clock.now += 59
    _ask(answerer, "第二个问题")
    assert "第一个问题" in [m["content"] for m in fake_llm.requests[-1]["messages"]]
    clock.now += 61  # silence longer than MEMORY_TTL_S
    _ask(answerer, "第三个问题")
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("http_500", "http_error"),
        ("malformed", "malformed"),
        ("refusal", "refusal"),
        ("empty", "malformed"),
        ("drop", "connection"),
        ("slow", "timeout"),
    ],
)
def test_llm_failures_fall_back_to_the_kb_and_are_counted(
    make_client, llm_settings, fake_llm, mode, reason
):
    fake_llm.mode = mode
    client = make_client(replace(llm_settings, llm_timeout_s=0.5))
    errors = metric(client, "ai_llm_errors_total", reason=reason)
    fallbacks = metric(client, "ai_llm_fallbacks_total", reason=reason)
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    fake_llm.release.set()
    assert content.startswith("【如何更换 Token（令牌轮换）】")
    assert metric(client, "ai_llm_errors_total", reason=reason) == errors + 1
    assert metric(client, "ai_llm_fallbacks_total", reason=reason) == fallbacks + 1
    assert metric(client, "ai_answer_latency_seconds_count", answerer="kb") >= 1


def test_unreachable_llm_falls_back(make_client, llm_settings):
    from tests.support.processes import free_port

    settings = replace(llm_settings, llm_base_url=f"http://127.0.0.1:{free_port()}/v1")
    client = make_client(settings)
    before = metric(client, "ai_llm_fallbacks_total", reason="connection")
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert content.startswith("【如何更换 Token（令牌轮换）】")
    assert metric(client, "ai_llm_fallbacks_total", reason="connection") == before + 1


def test_late_llm_is_cut_at_the_deadline(make_client, llm_settings, fake_llm):
    fake_llm.mode = "slow"
    client = make_client(replace(llm_settings, llm_timeout_s=8.0))
    started = time.monotonic()
    response = client.post(
        "/v1/reply", json=text_message("令牌怎么轮换"), headers={"X-Reply-Deadline-Ms": "800"}
    )
    elapsed = time.monotonic() - started
    fake_llm.release.set()
    assert reply_text(response).startswith("【如何更换 Token（令牌轮换）】")
    assert elapsed < 0.8, elapsed
    assert fake_llm.received.is_set()  # it was asked, and cut short


def test_no_llm_call_when_the_deadline_leaves_no_time(make_client, llm_settings, fake_llm):
    client = make_client(llm_settings)
    before = metric(client, "ai_llm_fallbacks_total", reason="deadline")
    response = client.post(
        "/v1/reply", json=text_message("令牌怎么轮换"), headers={"X-Reply-Deadline-Ms": "100"}
    )
    assert reply_text(response).startswith("【如何更换 Token（令牌轮换）】")
    assert fake_llm.requests == []
    assert metric(client, "ai_llm_fallbacks_total", reason="deadline") == before + 1


def test_bad_deadline_header_uses_the_default(make_client, llm_settings, fake_llm):
    client = make_client(llm_settings)
    response = client.post(
        "/v1/reply", json=text_message("令牌怎么轮换"), headers={"X-Reply-Deadline-Ms": "soon"}
    )
    assert reply_text(response) == "这是大模型的回答。"


def test_markdown_from_the_llm_becomes_plain_text(make_client, llm_settings, fake_llm):
    fake_llm.answer = lambda messages: "## 步骤\n\n1. **先**改服务端\n- 再改 `后台`\n"
    client = make_client(llm_settings)
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert content == "【步骤】\n\n1. 先改服务端\n• 再改 后台"


@pytest.mark.parametrize(
    "content",
    [
        "<think>\n用户问的是令牌轮换，先想想……\n</think>\n\n先改服务端，再改后台。",
        "用户问的是令牌轮换，先想想……\n</think>\n先改服务端，再改后台。",
        "<THINK>大写的标签</THINK>先改服务端，再改后台。",
    ],
)
def test_a_reasoning_models_thinking_never_reaches_the_user(
    make_client, llm_settings, fake_llm, content
):
    fake_llm.answer = lambda messages: content
    client = make_client(llm_settings)
    assert reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换"))) == (
        "先改服务端，再改后台。"
    )
    fake_llm.answer = lambda messages: "好的。"
    client.post("/v1/reply", json=text_message("还有呢"))
    remembered = fake_llm.requests[-1]["messages"][1:-1]
    assert remembered[1] == {"role": "assistant", "content": "先改服务端，再改后台。"}


@pytest.mark.parametrize(
    "answer", ["HTML 没有 <think> 标签。", "`<think>` 和 `</think>` 是一对标签。"]
)
def test_an_answer_that_mentions_the_tags_is_left_whole(
    make_client, llm_settings, fake_llm, answer
):
    fake_llm.answer = lambda messages: answer
    client = make_client(llm_settings)
    assert reply_text(client.post("/v1/reply", json=text_message("think 标签"))) == (
        answer.replace("`", "")  # inline code marks go, as for any answer
    )


def test_an_answer_cut_off_while_thinking_falls_back_to_the_kb(make_client, llm_settings, fake_llm):
    fake_llm.answer = lambda messages: "<think>\n用户问的是令牌轮换，先想想，第一步"
    client = make_client(llm_settings)
    errors = metric(client, "ai_llm_errors_total", reason="malformed")
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert content.startswith("【如何更换 Token（令牌轮换）】")
    assert "先想想" not in content
    assert metric(client, "ai_llm_errors_total", reason="malformed") == errors + 1


def test_long_llm_answer_is_split_and_continued(make_client, llm_settings, fake_llm):
    sentence = "Celestial Nexus 会把长回答分成几段发送，每段不超过两千字节。"
    fake_llm.answer = lambda messages: sentence * 120
    client = make_client(llm_settings)
    parts = [reply_text(client.post("/v1/reply", json=text_message("讲个长的")))]
    while "继续" in parts[-1]:
        parts.append(reply_text(client.post("/v1/reply", json=text_message("继续"))))
    bodies = "".join(p.split("\n\n（内容较长")[0] for p in parts)
    assert bodies == sentence * 120
    assert all(len(p.encode()) <= 2000 for p in parts)
    # The LLM was asked once: 继续 is served from the parked parts.
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize(
    ("event", "key"), [("LOCATION", None), ("VIEW", "https://example.com"), ("CLICK", "ABOUT")]
)
def test_events_never_reach_the_llm(make_client, llm_settings, fake_llm, event, key):
    from tests.ai_api.conftest import event_message

    client = make_client(llm_settings)
    client.post("/v1/reply", json=event_message(event, key))
    assert fake_llm.requests == []


def test_client_raises_llm_error_with_reason(fake_llm):
    fake_llm.mode = "http_500"
    client = LLMClient(LLMConfig(fake_llm.base_url, "k", "m", 1.0, 10, 0.0))

    async def run() -> None:
        try:
            with pytest.raises(LLMError) as info:
                await client.complete([{"role": "user", "content": "hi"}], 1.0)
            assert info.value.reason == "http_error"
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("answer", ["---", "***", "<br>", "```\n```", "|---|"])
@pytest.mark.parametrize("parts", ["", "all"])
def test_an_llm_answer_with_no_text_left_is_malformed(
    make_client, llm_settings, fake_llm, answer, parts
):
    fake_llm.answer = lambda messages: answer
    client = make_client(llm_settings)
    errors = metric(client, "ai_llm_errors_total", reason="malformed")
    fallbacks = metric(client, "ai_llm_fallbacks_total", reason="malformed")
    response = client.post(
        "/v1/reply", json=text_message("令牌怎么轮换"), headers={"X-Reply-Parts": parts}
    )
    assert reply_text(response).startswith("【如何更换 Token（令牌轮换）】")
    assert metric(client, "ai_llm_errors_total", reason="malformed") == errors + 1
    assert metric(client, "ai_llm_fallbacks_total", reason="malformed") == fallbacks + 1
    fake_llm.answer = lambda messages: "好的。"
    reply_text(client.post("/v1/reply", json=text_message("还有呢")))
    remembered = fake_llm.requests[-1]["messages"][1:-1]
    assert [m["role"] for m in remembered] == ["user", "assistant"]
    assert remembered[1]["content"].startswith("【如何更换 Token")  # not an empty turn


class WritesHangStore(LocalStore):
    """An in-process store whose writes hang until `release` is set, like a stopped Redis."""

    def __init__(self) -> None:
        super().__init__(100)
        self.release = asyncio.Event()

    async def push_trim(self, key: str, values: list[str], keep: int, ttl_s: int) -> None:
        await self.release.wait()
        await super().push_trim(key, values, keep, ttl_s)

    async def set_list(self, key: str, values: list[str], ttl_s: int) -> None:
        await self.release.wait()
        await super().set_list(key, values, ttl_s)


def test_a_hanging_store_does_not_make_the_answer_late(llm_settings, fake_llm):
    fake_llm.answer = lambda messages: "很长的回答。" * 400
    store = WritesHangStore()
    llm = LLMClient(LLMConfig(fake_llm.base_url, "k", "m", 2.0, 100, 0.0))
    answerer = answerer_over(replace(llm_settings, deadline_margin_ms=150), store, llm)
    msg = NormalizedMessage.model_validate(text_message("令牌怎么轮换"))

    async def scenario() -> None:
        started = time.monotonic()
        answer = await asyncio.wait_for(answerer.answer(msg, started + 0.6), timeout=2)
        assert time.monotonic() - started < 0.6  # the deadline, margin included
        assert answer.answerer == "llm" and "继续" in answer.reply.content
        store.release.set()  # Redis answers again: the writes land after the reply
        await answerer.finish_writes()
        assert len(await store.get_list(memory_key("oUser1"))) == 2
        assert await store.get_list(parked_key("oUser1"))
        await llm.close()

    asyncio.run(scenario())


def test_a_long_question_reaches_the_llm_cut_to_its_beginning(make_client, llm_settings, fake_llm):
    client = make_client(llm_settings)
    long_text = "令牌怎么轮换？" + "补充说明。" * 6000
    assert reply_text(client.post("/v1/reply", json=text_message(long_text)))
    question = fake_llm.requests[-1]["messages"][-1]["content"]
    assert question == long_text[:MAX_QUESTION_CHARS] and MAX_QUESTION_CHARS == 4000
