"""wechat_gateway.delivery in-process: hand-offs, parking and the modes, with short budgets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
import redis

from tests.support.exposition import metric_sum
from tests.support.processes import wait_until
from tests.support.wechat import event_message, text_message
from wechat_gateway.dedup import FailoverStore, LocalStore
from wechat_gateway.splitting import MORE_HINT, PART_BYTES, split_utf8


class RecordingSender:
    """Stands in for the customer-service client; refuses when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, dict]] = []
        self.called = threading.Event()

    def deliver(self, openid, reply):
        self.sent.append((openid, reply))
        self.called.set()
        return reply if self.refuse else None


def finished(fake_ai, count: int) -> bool:
    return len(fake_ai.completed) >= count


def job_key(fields: dict[str, str]) -> str:
    return f"msg:{fields['MsgId']}:{fields['FromUserName']}:{fields['CreateTime']}"


def wait_for_the_job(gateway, fields: dict[str, str]) -> None:
    """Until the job of `fields` has delivered, pushed or parked its answer: the worker
    forgets a job only once it is done with it."""
    delivery = gateway.app.extensions["celestial_nexus"].delivery
    wait_until(lambda: job_key(fields) not in delivery._done, 5, "the job to end")


def next_reply(gateway, fake_ai, openid: str) -> str:
    """What the user's next message ("在吗", answered at once) gets back."""
    fake_ai.latency_s = 0
    return gateway.reply_of(gateway.post(text_message("在吗", openid=openid)))["Content"]


def test_custom_mode_pushes_a_late_answer(make_gateway, fake_ai):
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.3)
    fake_ai.latency_s = 0.8
    response = gateway.post(text_message("慢", openid="oPush"))
    assert response.data == b"success"
    assert sender.called.wait(5)
    assert sender.sent == [("oPush", {"type": "text", "content": "答：慢"})]


def test_custom_mode_parks_what_cannot_be_pushed(make_gateway, fake_ai):
    sender = RecordingSender(refuse=True)  # e.g. 45015: outside the 48-hour window
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.3)
    fake_ai.latency_s = 0.8
    assert gateway.post(text_message("慢", openid="oPark")).data == b"success"
    assert sender.called.wait(5)
    fake_ai.latency_s = 0
    parked = gateway.reply_of(gateway.post(text_message("在吗", openid="oPark")))
    assert parked["Content"] == "答：慢"
    again = gateway.reply_of(gateway.post(text_message("再问", openid="oPark")))
    assert again["Content"] == "答：再问"  # a parked answer is delivered once


def test_retry_mode_last_attempt_sends_the_placeholder(make_gateway, fake_ai):
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    fake_ai.latency_s = 1.0
    reply = gateway.reply_of(gateway.post(text_message("慢", openid="oHold")))
    assert reply["Content"].startswith("正在思考")


def test_retry_mode_holds_earlier_attempts_without_success(make_gateway, fake_ai):
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4)
    fake_ai.latency_s = 1.0
    response = gateway.post(text_message("慢", openid="oHeld"))
    assert response.status_code == 503 and response.data == b""  # never `success`


def test_a_held_attempt_is_counted_but_not_timed(make_gateway, fake_ai):
    """Held on purpose past WeChat's cut: it must not raise the gateway's latency alert."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4)

    def counts() -> tuple[float, float]:
        text = gateway.client.get("/metrics").data.decode()
        held = metric_sum(text, "wechat_requests_total", method="POST", outcome="held")
        return held, metric_sum(text, "wechat_request_latency_seconds_count", method="POST")

    held_before, timed_before = counts()
    fake_ai.latency_s = 1.0
    assert gateway.post(text_message("慢", openid="oHeldTimed")).status_code == 503
    fake_ai.latency_s = 0
    assert gateway.reply_of(gateway.post(text_message("快", openid="oHeldTimed")))
    held_after, timed_after = counts()
    assert (held_after - held_before, timed_after - timed_before) == (1, 1)  # only the answer


def test_unsubscribe_erases_parked_answers(gateway, fake_ai):
    store = gateway.app.extensions["celestial_nexus"].store
    user = "gh_0123456789ab:oBye"
    store.park(user, {"reply": {"type": "text", "content": "old"}, "source": "ai"}, 60)
    fake_ai.reply_for = lambda m: None
    assert gateway.post(event_message("unsubscribe", openid="oBye")).data == b"success"
    assert store.pop_parked(user) is None


def test_an_answer_in_flight_at_unsubscribe_is_not_parked(make_gateway, fake_ai):
    """Placeholder sent, the user unsubscribes, the answer arrives: it must not wait for
    them to come back (WeChat's rules: what we keep about a user goes at unsubscribe)."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    fake_ai.latency_s = 0.8
    fields = text_message("私人问题", openid="oGone")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    fake_ai.latency_s = 0  # for the unsubscribe; the question's answer is still on its way
    answer_of = fake_ai.reply_for
    fake_ai.reply_for = lambda m: None if m["type"] == "event" else answer_of(m)
    assert gateway.post(event_message("unsubscribe", openid="oGone")).data == b"success"
    wait_for_the_job(gateway, fields)
    store = gateway.app.extensions["celestial_nexus"].store
    assert store.get(job_key(fields)).answer["reply"]["content"] == "答：私人问题"  # it came
    assert store.pop_parked("gh_0123456789ab:oGone") is None


def test_fallback_answers_are_not_parked(make_gateway, fake_ai):
    gateway = make_gateway(
        reply_budget_s=0.3,
        retry_hold_s=0.4,
        max_attempts=1,
        late_answer_timeout_s=0.6,
        delivery_window_s=0.5,
    )
    fake_ai.latency_s = 2.0  # beyond the late-answer timeout: the job ends in the fallback
    fields = text_message("慢", openid="oFallback")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    store = gateway.app.extensions["celestial_nexus"].store
    key = job_key(fields)
    wait_until(lambda: store.get(key).answer is not None, 5, "the job to end")
    assert store.get(key).answer["source"] == "fallback"
    assert store.pop_parked("gh_0123456789ab:oFallback") is None


def test_custom_mode_long_fast_answer_first_bubble_passive_rest_pushed(make_gateway, fake_ai):
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom")
    long_text = "客服消息分多条。" * 400  # 9600 bytes
    fake_ai.reply_for = lambda m: {"type": "text", "content": long_text}
    passive = gateway.reply_of(gateway.post(text_message("长", openid="oLongFast")))
    assert fake_ai.headers[-1]["X-Reply-Parts"] == "all"
    assert sender.called.wait(5)
    ((openid, rest),) = sender.sent
    assert openid == "oLongFast"
    assert len(passive["Content"].encode()) <= 2000
    assert passive["Content"] + rest["content"] == long_text


def test_custom_mode_long_late_answer_pushed_whole(make_gateway, fake_ai):
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.3)
    long_text = "迟到的长回答。" * 400
    fake_ai.reply_for = lambda m: {"type": "text", "content": long_text}
    fake_ai.latency_s = 0.8
    assert gateway.post(text_message("长", openid="oLongLate")).data == b"success"
    assert sender.called.wait(5)
    assert sender.sent == [("oLongLate", {"type": "text", "content": long_text})]


def test_retry_mode_cuts_a_reply_longer_than_a_bubble_and_parks_nothing(gateway, fake_ai, caplog):
    """The AI API was asked for parts (it keeps the rest for 继续): a longer reply breaks the
    contract. Its tail used to be parked, and it then answered the user's next question,
    which never reached the AI."""
    long_text = "这是一个很长的回答。" * 300  # 9000 bytes
    fake_ai.reply_for = lambda message: {"type": "text", "content": long_text}
    with caplog.at_level(logging.WARNING):
        first = gateway.reply_of(gateway.post(text_message("长", openid="oTooLong")))["Content"]
    assert first == split_utf8(long_text, PART_BYTES)[0]
    assert [r.bytes for r in caplog.records if r.event == "reply_cut"] == [9000]

    fake_ai.reply_for = lambda message: {"type": "text", "content": "今天晴。"}
    next_answer = gateway.post(text_message("天气怎么样", openid="oTooLong"))
    assert gateway.reply_of(next_answer)["Content"] == "今天晴。"
    assert fake_ai.received[-1]["content"] == "天气怎么样"


def test_retry_mode_asks_for_parts(gateway, fake_ai):
    gateway.post(text_message("hi"))
    assert "X-Reply-Parts" not in fake_ai.headers[-1]


def test_a_reply_that_breaks_the_contract_gets_the_fallback_at_once(make_gateway, fake_ai):
    """Not a 503 and a wait for a retry: the user gets WECHAT_FALLBACK_REPLY on the spot."""
    gateway = make_gateway(fallback_reply="暂时无法回答")
    fake_ai.raw_body = b'{"reply": {"type": "news", "articles": "abc"}}'
    response = gateway.post(text_message("新闻", openid="oBadNews"))
    assert response.status_code == 200
    assert gateway.reply_of(response)["Content"] == "暂时无法回答"


def test_a_job_that_fails_answers_every_attempt_with_the_fallback(
    make_gateway, fake_ai, monkeypatch
):
    from wechat_gateway.delivery import Delivery

    def broken(self, answer):
        raise RuntimeError("a bug after the AI answered")

    monkeypatch.setattr(Delivery, "_split_off_rest", broken)
    gateway = make_gateway(fallback_reply="暂时无法回答")
    fields = text_message("你好", openid="oBug")
    first = gateway.post(fields)
    retry = gateway.post(fields)  # WeChat's retry is answered from the stored fallback
    assert [r.status_code for r in (first, retry)] == [200, 200]
    assert [gateway.reply_of(r)["Content"] for r in (first, retry)] == ["暂时无法回答"] * 2
    assert fake_ai.calls_for(fake_ai.received[-1]["dedup_key"]) == 1


def test_an_attempt_ten_seconds_after_the_message_is_the_last_whatever_the_count(
    make_gateway, fake_ai
):
    """Without Redis each worker counts attempts in its own store: WeChat's third attempt
    can be a worker's first. Held for a retry that never comes, it would show the user
    '该公众号暂时无法提供服务'; by the message's age it gets the placeholder."""
    import time

    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4)
    fake_ai.latency_s = 1.0
    sent_10s_ago = text_message("慢", openid="oThird", create_time=int(time.time()) - 10)
    response = gateway.post(sent_10s_ago)
    assert response.status_code == 200
    assert gateway.reply_of(response)["Content"].startswith("正在思考")
    sent_4s_ago = text_message("慢", openid="oSecond", create_time=int(time.time()) - 4)
    assert gateway.post(sent_4s_ago).status_code == 503  # not yet: WeChat retries it


def test_a_retry_after_the_push_took_over_answers_success(make_gateway, fake_ai):
    """custom mode: once an attempt answered `success` and handed the answer to the push, a
    WeChat retry (the `success` came after WeChat's cut) must not deliver it passively too."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.3)
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oOnce")
    assert gateway.post(fields).data == b"success"
    assert sender.called.wait(5)
    assert gateway.post(fields).data == b"success"  # the retry, after the answer is stored
    assert sender.sent == [("oOnce", {"type": "text", "content": "答：慢"})]


def test_a_push_that_fails_unexpectedly_parks_the_answer(make_gateway, fake_ai):
    class BrokenSender(RecordingSender):
        def deliver(self, openid, reply):
            super().deliver(openid, reply)
            raise ConnectionError("redis went away under the token lock")

    sender = BrokenSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.3)
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oBroken")
    assert gateway.post(fields).data == b"success"
    wait_for_the_job(gateway, fields)
    assert sender.called.is_set()
    fake_ai.latency_s = 0
    parked = gateway.reply_of(gateway.post(text_message("在吗", openid="oBroken")))
    assert parked["Content"] == "答：慢"


def test_a_late_answer_with_nothing_to_show_is_not_parked(make_gateway, fake_ai):
    """Parked, it would turn the user's next message into a bare `success`."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    fake_ai.latency_s = 0.6
    fake_ai.reply_for = lambda message: {"type": "text", "content": ""}
    fields = text_message("空", openid="oEmpty")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    wait_for_the_job(gateway, fields)
    store = gateway.app.extensions["celestial_nexus"].store
    assert store.get(job_key(fields)).answer["reply"] == {"type": "text", "content": ""}
    fake_ai.latency_s = 0
    fake_ai.reply_for = lambda message: {"type": "text", "content": "答：" + message["content"]}
    again = gateway.reply_of(gateway.post(text_message("在吗", openid="oEmpty")))
    assert again["Content"] == "答：在吗"


def park_late_answers(gateway, fake_ai, openid: str, *answers: str) -> None:
    """`answers` to questions asked one after the other, each late in custom mode and its
    push refused (e.g. 48001): parked in that order. The questions are all in before the
    first answer is parked, or it would answer the next question. The AI then answers each
    new question with "答：<question>"."""
    texts = iter(answers)
    fake_ai.latency_s = 0.8
    fake_ai.reply_for = lambda message: {"type": "text", "content": next(texts)}
    questions = [text_message(f"问题{n}", openid=openid) for n in range(len(answers))]
    for fields in questions:
        assert gateway.post(fields).data == b"success"
    for fields in questions:
        wait_for_the_job(gateway, fields)
    fake_ai.latency_s = 0
    fake_ai.reply_for = lambda message: {"type": "text", "content": f"答：{message['content']}"}


def park_a_long_answer(make_gateway, fake_ai, long_answer: str, openid: str, **settings):
    gateway = make_gateway(
        sender=RecordingSender(refuse=True),
        slow_reply_mode="custom",
        reply_budget_s=0.3,
        **settings,
    )
    park_late_answers(gateway, fake_ai, openid, long_answer)
    return gateway


def said(gateway, openid: str, *texts: str) -> list[str]:
    """The text each message in turn gets back."""
    return [
        gateway.reply_of(gateway.post(text_message(text, openid=openid)))["Content"]
        for text in texts
    ]


def read_through(gateway, openid: str, first_text: str) -> str:
    """The text of a long parked answer as the user reads it: `first_text`, then 继续 until
    a bubble comes without the 继续 hint. Every bubble fits WeChat's limit."""
    bubbles = said(gateway, openid, first_text)
    while bubbles[-1].endswith(MORE_HINT):
        assert len(bubbles) < 20, "the 继续 hint never ends"
        bubbles += said(gateway, openid, "继续")
    assert all(len(bubble.encode()) <= PART_BYTES for bubble in bubbles)
    return "".join(bubble.removesuffix(MORE_HINT) for bubble in bubbles)


@pytest.fixture(params=["local", "redis"])
def parking_store(request) -> dict:
    """Settings for the in-process store, or for a real redis-server (its Lua claim)."""
    if request.param == "local":
        return {}
    return {"redis_url": request.getfixturevalue("redis_server").extra["url"]}


def test_two_long_promised_answers_each_shown_whole_through_continue(
    make_gateway, fake_ai, parking_store
):
    """Parked split at once, the rest of the first shared the queue with the second: the
    next message dropped it, and 继续 could show the second answer in the middle of the
    first; with one rest slot filled at parking time, the second rest overwrote the first."""
    first_answer = "".join(f"第一个回答的第{i}句。" for i in range(300))  # 8 KB
    second_answer = "".join(f"第二个回答的第{i}句。" for i in range(300))
    gateway = make_gateway(
        sender=RecordingSender(refuse=True),
        slow_reply_mode="custom",
        reply_budget_s=0.3,
        **parking_store,
    )
    park_late_answers(gateway, fake_ai, "oTwoLate", first_answer, second_answer)
    assert read_through(gateway, "oTwoLate", "好的") == first_answer
    # Promised by a placeholder, the second answer comes on the next message that is not 继续.
    assert read_through(gateway, "oTwoLate", "谢谢") == second_answer
    assert said(gateway, "oTwoLate", "明白了", "继续") == ["答：明白了", "答：继续"]


def test_a_promised_answer_comes_even_when_the_user_asks_for_more(
    make_gateway, fake_ai, parking_store
):
    """继续 with no rest kept takes the promised answer: the placeholder said "send anything"."""
    gateway = park_a_long_answer(make_gateway, fake_ai, "迟到的短回答。", "oMore", **parking_store)
    assert said(gateway, "oMore", "继续", "继续") == ["迟到的短回答。", "答：继续"]


def test_a_long_parked_answer_comes_a_bubble_at_a_time_on_continue(
    make_gateway, fake_ai, parking_store
):
    """The next message gets the first bubble with the 继续 hint; each 继续 the next one."""
    long_answer = "第一句话很长。" * 290  # 6090 bytes of UTF-8
    gateway = park_a_long_answer(make_gateway, fake_ai, long_answer, "oLongPark", **parking_store)
    before = parked_counts(gateway)
    bubbles = said(gateway, "oLongPark", "你好", "继续", "「继续」", "继续？", "/continue")
    last = next(i for i, bubble in enumerate(bubbles) if not bubble.endswith(MORE_HINT))
    assert last == 3  # four bubbles of at most 2000 bytes, the hint included
    assert all(len(bubble.encode()) <= PART_BYTES for bubble in bubbles)
    assert "".join(b.removesuffix(MORE_HINT) for b in bubbles[: last + 1]) == long_answer
    assert bubbles[last + 1] == "答：/continue"  # nothing parked left: the AI API's 继续
    replies, timed = (a - b for a, b in zip(parked_counts(gateway), before, strict=True))
    assert (replies, timed) == (4, 1)  # four replies; the user's wait ended once


def test_a_new_question_is_answered_and_drops_the_rest_of_a_parked_answer(
    make_gateway, fake_ai, parking_store
):
    """Each bubble of a long parked answer used to answer one of the user's next messages,
    whatever they asked: their questions never reached the AI."""
    long_answer = "第一句话很长。" * 290
    gateway = park_a_long_answer(
        make_gateway, fake_ai, long_answer, "oNewQuestion", **parking_store
    )
    first, *asked = said(gateway, "oNewQuestion", "你好", "天气怎么样", "继续")
    assert first.endswith(MORE_HINT)
    assert asked == ["答：天气怎么样", "答：继续"]


def test_custom_mode_the_rest_of_a_refused_push_comes_next_with_the_hint(make_gateway, fake_ai):
    """A fast long answer: its first bubble went out passively, without a 继续 hint, and the
    push of the rest was refused. The rest comes on the next message, told as a rest (the
    hint), then on 继续; kept for 继续 alone it was dropped by the next message unseen."""
    long_text = "".join(f"第{i}句话。" for i in range(500))  # 6 KB
    fake_ai.reply_for = lambda message: {
        "type": "text",
        "content": long_text if message["content"] == "长" else f"答：{message['content']}",
    }
    gateway = make_gateway(sender=RecordingSender(refuse=True), slow_reply_mode="custom")
    fields = text_message("长", openid="oRestRefused")
    passive = gateway.reply_of(gateway.post(fields))["Content"]
    wait_for_the_job(gateway, fields)
    assert not passive.endswith(MORE_HINT) and len(passive.encode()) <= PART_BYTES
    assert passive + read_through(gateway, "oRestRefused", "天气怎么样") == long_text
    assert said(gateway, "oRestRefused", "谢谢") == ["答：谢谢"]


def test_past_the_push_quota_the_rest_waits_for_continue(make_gateway, fake_ai):
    """The customer-service messages ended with the 继续 hint: the rest is the user's on 继续,
    and any other message is a new question."""
    rest = "剩下的部分。" * 400  # 7200 bytes

    class QuotaSender(RecordingSender):
        def deliver(self, openid, reply):
            super().deliver(openid, reply)
            return {"type": "text", "content": rest, "continuation": True}

    gateway = make_gateway(sender=QuotaSender(), slow_reply_mode="custom", reply_budget_s=0.3)
    fake_ai.latency_s = 0.8
    fields = text_message("很长的问题", openid="oQuota")
    timed = metric_sum(
        gateway.client.get("/metrics").data.decode(),
        "wechat_time_to_answer_seconds_count",
        path="custom",
    )
    assert gateway.post(fields).data == b"success"
    wait_for_the_job(gateway, fields)
    # The pushed start ended the user's wait: timed once, as a custom reply.
    after = gateway.client.get("/metrics").data.decode()
    assert metric_sum(after, "wechat_time_to_answer_seconds_count", path="custom") == timed + 1
    fake_ai.latency_s = 0
    more = gateway.reply_of(gateway.post(text_message("继续", openid="oQuota")))["Content"]
    assert more.endswith(MORE_HINT) and rest.startswith(more.removesuffix(MORE_HINT))
    other = gateway.reply_of(gateway.post(text_message("谢谢", openid="oQuota")))["Content"]
    assert other == "答：谢谢"


def parked_counts(gateway) -> tuple[float, float]:
    text = gateway.client.get("/metrics").data.decode()
    return (
        metric_sum(text, "wechat_replies_total", path="parked"),
        metric_sum(text, "wechat_time_to_answer_seconds_count", path="parked"),
    )


def test_drain_waits_for_running_jobs_within_its_budget(make_gateway, fake_ai):
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.2)
    delivery = gateway.app.extensions["celestial_nexus"].delivery
    assert delivery.drain(1.0) == 0  # nothing running: returns at once
    fake_ai.latency_s = 1.0
    assert gateway.post(text_message("慢", openid="oDrain")).data == b"success"
    assert delivery.drain(0.1) == 1  # out of budget: the job is reported left behind
    assert delivery.drain(5.0) == 0
    assert sender.sent == [("oDrain", {"type": "text", "content": "答：慢"})]


def test_a_retry_after_a_lost_claim_reply_waits_for_the_in_process_job(make_gateway, fake_ai):
    """The first claim reached Redis but its reply timed out: the job runs in-process.
    WeChat's retry on this worker must get that job's answer, not ask the AI again."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, job_lease_s=0.3)
    on_redis(gateway, RedisStandIn(claim="after"))
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oLost")
    assert gateway.post(fields).status_code == 503  # held: WeChat retries
    wait_until(lambda: finished(fake_ai, 1), 5, "the in-process job to end")
    assert gateway.reply_of(gateway.post(fields))["Content"] == "答：慢"
    assert fake_ai.calls_for(job_key(fields)) == 1


class RedisStandIn:
    """A RedisStore stand-in whose data is a LocalStore. `down`: every call is refused.
    `fail_next[method]`: that method's next call times out, "before" it runs or "after"
    (it ran, its reply was lost); `while_lost[method]` runs before the timeout surfaces,
    as other requests go on during a slow one."""

    name = "redis"

    def __init__(self, down: bool = False, **fail_next: str) -> None:
        self.jobs = LocalStore(100)
        self.down = down
        self.fail_next = dict(fail_next)
        self.while_lost: dict[str, Callable[[], None]] = {}

    def __getattr__(self, method):
        run = getattr(self.jobs, method)

        def call(*args, **kwargs):
            if self.down:
                raise redis.ConnectionError("connection refused")
            how = self.fail_next.pop(method, None)
            if how == "before":
                self.while_lost.pop(method, lambda: None)()
                raise redis.TimeoutError("Timeout reading from socket")
            result = run(*args, **kwargs)
            if how == "after":
                self.while_lost.pop(method, lambda: None)()
                raise redis.TimeoutError("Timeout reading from socket")
            return result

        return call


def on_redis(gateway, primary: RedisStandIn):
    """The gateway's Delivery, its store now `primary` with the in-process fallback."""
    delivery = gateway.app.extensions["celestial_nexus"].delivery
    delivery.store = FailoverStore(primary, LocalStore(100), retry_after_s=0.0)
    return delivery


def test_redis_back_between_attempts_the_retry_gets_the_in_process_answer(make_gateway, fake_ai):
    """Claimed in-process during an outage: once Redis is back, Redis has never heard of
    the message, and the retry must not start a second job there."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4)
    primary = RedisStandIn(down=True)
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.6
    fields = text_message("停电时问的", openid="oOutage")
    assert gateway.post(fields).status_code == 503
    primary.down = False
    wait_until(lambda: finished(fake_ai, 1), 5, "the in-process job to end")
    assert gateway.reply_of(gateway.post(fields))["Content"] == "答：停电时问的"
    assert fake_ai.calls_for(job_key(fields)) == 1


@pytest.mark.parametrize("ran", [False, True], ids=["never_ran", "reply_lost"])
def test_a_hand_off_whose_outcome_is_unknown_still_delivers_the_answer_once(
    make_gateway, fake_ai, ran
):
    """The placeholder promises the answer: the job must park it whether or not Redis
    recorded the hand-off, and park it once."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    on_redis(gateway, RedisStandIn(hand_off="after" if ran else "before"))
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oHandOff")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    wait_for_the_job(gateway, fields)
    assert next_reply(gateway, fake_ai, "oHandOff") == "答：慢"
    again = gateway.reply_of(gateway.post(text_message("再问", openid="oHandOff")))
    assert again["Content"] == "答：再问"


def test_an_unknown_hand_off_of_a_job_run_elsewhere_promises_nothing(make_gateway, fake_ai):
    """Redis unreachable at the last attempt of a job another worker runs: that worker
    may never learn of a hand-off, so the user gets the fallback, not a placeholder."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    primary = RedisStandIn(hand_off="before")
    on_redis(gateway, primary)
    fields = text_message("别处", openid="oElsewhere")
    primary.jobs.claim(job_key(fields), "another-worker", time.time(), 120, 30.0)
    reply = gateway.reply_of(gateway.post(fields))
    assert reply["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"
    assert fake_ai.calls_for(job_key(fields)) == 0


def test_redis_down_when_the_answer_is_ready_the_placeholders_promise_is_kept(
    make_gateway, fake_ai
):
    """The hand-off reached Redis, then Redis went away before the job could store its
    answer there: the job knows its own worker handed off, and parks the answer."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    primary = RedisStandIn()
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oRedisGone")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    primary.down = True
    wait_for_the_job(gateway, fields)
    assert next_reply(gateway, fake_ai, "oRedisGone") == "答：慢"


def test_a_parked_answer_taken_from_redis_is_sent_even_if_storing_it_fails(make_gateway, fake_ai):
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4)
    primary = RedisStandIn(finish="before")
    on_redis(gateway, primary)
    parked = {"reply": {"type": "text", "content": "答：旧问题"}, "source": "ai"}
    primary.jobs.park("gh_0123456789ab:oParkedFail", parked, 600)
    reply = gateway.reply_of(gateway.post(text_message("在吗", openid="oParkedFail")))
    assert reply["Content"] == "答：旧问题"


@pytest.mark.parametrize("failure", ["hand_off_unconfirmed", "redis_down_at_finish"])
def test_mode_off_never_parks_the_answer_it_gave_up_on(make_gateway, fake_ai, failure):
    """mode off: the user got WECHAT_FALLBACK_REPLY; a late answer must not take the place
    of the answer to their next message, whatever Redis did meanwhile."""
    gateway = make_gateway(slow_reply_mode="off", reply_budget_s=0.3, max_attempts=1)
    primary = (
        RedisStandIn(hand_off="before") if failure == "hand_off_unconfirmed" else RedisStandIn()
    )
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oOff")
    assert gateway.reply_of(gateway.post(fields))["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"
    primary.down = failure == "redis_down_at_finish"
    wait_for_the_job(gateway, fields)
    assert next_reply(gateway, fake_ai, "oOff") == "答：在吗"


def test_a_hand_off_whose_reply_is_lost_as_the_job_ends_delivers_once(make_gateway, fake_ai):
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=1)
    delivery = gateway.app.extensions["celestial_nexus"].delivery
    fields = text_message("慢", openid="oOnce")
    primary = RedisStandIn(hand_off="after")
    primary.while_lost["hand_off"] = lambda: wait_until(
        lambda: job_key(fields) not in delivery._done, 5, "the job to end while the reply is lost"
    )
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.6
    first = gateway.reply_of(gateway.post(fields))["Content"]
    fake_ai.latency_s = 0
    follow_up = gateway.reply_of(gateway.post(text_message("在吗", openid="oOnce")))["Content"]
    assert (first.startswith("正在思考"), follow_up) == (True, "答：慢")


def test_a_job_evicted_from_a_full_store_keeps_its_placeholders_promise(make_gateway, fake_ai):
    """No Redis, WECHAT_DEDUP_MAX reached by unanswered jobs: the running job is dropped
    from the store. The placeholder sent for it must still be followed by the answer."""
    gateway = make_gateway(reply_budget_s=0.5, retry_hold_s=0.6, max_attempts=1)
    delivery = gateway.app.extensions["celestial_nexus"].delivery
    delivery.store = LocalStore(2)
    fake_ai.latency_for = lambda message: 0.8 if message.get("content") == "慢" else 2.0
    fields = text_message("慢", openid="oEvicted")
    first: dict = {}
    attempt = threading.Thread(target=lambda: first.update(response=gateway.post(fields)))
    attempt.start()
    wait_until(lambda: fake_ai.calls_for(job_key(fields)) == 1, 5, "the job to start")
    others = [text_message(f"别的{i}", openid=f"oCrowd{i}") for i in range(2)]
    crowd = [threading.Thread(target=gateway.post, args=(f,)) for f in others]
    for poster in crowd:
        poster.start()
    wait_until(lambda: all(fake_ai.calls_for(job_key(f)) for f in others), 5, "the crowd")
    attempt.join()
    assert gateway.reply_of(first["response"])["Content"].startswith("正在思考")
    wait_for_the_job(gateway, fields)
    for poster in crowd:
        poster.join()
    fake_ai.latency_for = lambda message: 0
    follow_up = gateway.reply_of(gateway.post(text_message("在吗", openid="oEvicted")))
    assert follow_up["Content"] == "答：慢"


def test_a_retry_during_an_outage_waits_for_the_job_this_worker_runs(make_gateway, fake_ai):
    """Claimed in Redis, then Redis fails: the retry that reaches this worker is claimed
    in-process, and must wait for the job already running here, not ask the AI again."""
    gateway = make_gateway(reply_budget_s=0.4, retry_hold_s=0.5)
    primary = RedisStandIn()
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.7
    fields = text_message("慢", openid="oSameWorker")
    assert gateway.post(fields).status_code == 503  # held; the job runs here, in Redis
    primary.down = True
    assert gateway.reply_of(gateway.post(fields))["Content"] == "答：慢"
    assert fake_ai.calls_for(job_key(fields)) == 1


def test_a_hand_off_made_during_an_outage_binds_the_job_after_redis_is_back(make_gateway, fake_ai):
    """The last attempt's hand-off went to the in-process store while Redis was down; Redis
    is back when the job finishes there, without the flag: the placeholder's answer must
    still be parked."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.4, max_attempts=2)
    primary = RedisStandIn()
    on_redis(gateway, primary)
    fake_ai.latency_s = 2.0
    created = int(time.time()) - 3  # 3-4 s old: the first attempt is not WeChat's last
    fields = text_message("慢", openid="oBackAgain", create_time=created)
    assert gateway.post(fields).status_code == 503  # held; the job runs here, in Redis
    primary.down = True
    # The in-process store counts this retry as attempt 1: its age makes it the last.
    wait_until(lambda: time.time() >= created + 4.05, 2, "the message to be 4 s old")
    assert gateway.reply_of(gateway.post(fields))["Content"].startswith("正在思考")
    primary.down = False
    wait_for_the_job(gateway, fields)
    assert next_reply(gateway, fake_ai, "oBackAgain") == "答：慢"
    assert fake_ai.calls_for(job_key(fields)) == 1


def three_attempts_across_an_outage(
    make_gateway, fake_ai, openid, latency_s, lease_s=30.0, before_last=None
):
    """Attempt 1 claimed in Redis (held; the job runs here), Redis down, attempt 2 claimed
    in-process on this worker (held), Redis back, `before_last(primary, fields)`, attempt 3:
    WeChat's last, by age."""
    gateway = make_gateway(reply_budget_s=0.3, retry_hold_s=0.3, job_lease_s=lease_s)
    primary = RedisStandIn()
    delivery = on_redis(gateway, primary)
    fake_ai.latency_s = latency_s
    created = int(time.time()) - 7
    wait_until(lambda: time.time() >= created + 8.0, 2, "the message to be 8 s old")
    fields = text_message("慢", openid=openid, create_time=created)
    assert gateway.post(fields).status_code == 503
    primary.down = True
    assert gateway.post(fields).status_code == 503
    primary.down = False
    if latency_s < 1.0:  # the job ends, in Redis, before WeChat's last attempt
        wait_until(lambda: finished(fake_ai, 1), 5, "the job's answer")
    if before_last is not None:
        before_last(primary, delivery, fields)
    wait_until(lambda: time.time() >= created + 9.05, 2, "the message to be 9 s old")
    return gateway, fields, gateway.reply_of(gateway.post(fields))["Content"]


@pytest.mark.parametrize("lease_s", [30.0, 0.3])
def test_the_last_attempt_after_an_outage_keeps_the_placeholders_promise(
    make_gateway, fake_ai, lease_s
):
    """Its claim finds the in-process copy the outage left; it must still wait for, and
    hand off to, the job running here, even when the copy's lease has long run out."""
    gateway, fields, third = three_attempts_across_an_outage(
        make_gateway, fake_ai, "oThird", latency_s=2.0, lease_s=lease_s
    )
    assert third.startswith("正在思考")
    wait_for_the_job(gateway, fields)
    assert next_reply(gateway, fake_ai, "oThird") == "答：慢"
    assert fake_ai.calls_for(job_key(fields)) == 1


def test_the_last_attempt_after_an_outage_gets_the_answer_already_stored(make_gateway, fake_ai):
    gateway, _, third = three_attempts_across_an_outage(
        make_gateway, fake_ai, "oReady", latency_s=0.8
    )
    assert (third, next_reply(gateway, fake_ai, "oReady")) == ("答：慢", "答：在吗")


def test_a_lost_hand_off_reply_after_an_outage_delivers_once(make_gateway, fake_ai):
    """Attempt 3 hands off in Redis, and its reply is lost while the job ends: the job parks
    the answer, so the attempt must not also reply with it from the in-process copy."""

    def lose_the_hand_off_reply(primary, delivery, fields):
        primary.fail_next["hand_off"] = "after"
        primary.while_lost["hand_off"] = lambda: wait_until(
            lambda: job_key(fields) not in delivery._done, 5, "the job to end meanwhile"
        )

    gateway, fields, third = three_attempts_across_an_outage(
        make_gateway, fake_ai, "oLostHandOff", latency_s=2.0, before_last=lose_the_hand_off_reply
    )
    assert [third, next_reply(gateway, fake_ai, "oLostHandOff")].count("答：慢") == 1
    assert fake_ai.calls_for(job_key(fields)) == 1


@pytest.mark.parametrize("how", ["retry_in_process", "hand_off_unconfirmed"])
def test_custom_mode_a_retry_after_a_hand_off_is_not_answered_too(make_gateway, fake_ai, how):
    """Attempt 1 waits out its budget and hands off (success, but past WeChat's 5 s when
    Redis is slow), so WeChat retries. The retry reaches the job running here: it must
    answer success as attempt 1 did, since the job pushes the answer."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    primary = RedisStandIn(hand_off="before") if how == "hand_off_unconfirmed" else RedisStandIn()
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oRetryPush" + how[:3])
    assert gateway.post(fields).data == b"success"  # attempt 1: custom_pending
    primary.down = how == "retry_in_process"  # attempt 2 claimed in-process
    second = gateway.post(fields)
    primary.down = False
    wait_for_the_job(gateway, fields)
    replied = second.data != b"success"
    assert not (replied and sender.sent), (second.data[:40], sender.sent)


def test_custom_mode_the_in_process_copy_knows_the_answer_was_pushed(make_gateway, fake_ai):
    """Attempt 1 hands off in Redis; attempt 2's claim times out (the in-process copy), its
    hand-off reaches Redis. The job pushes the answer and answers the copy: with Redis's
    flags, so attempt 3, claimed on the copy, answers success, not the answer again."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    primary = RedisStandIn()
    on_redis(gateway, primary)
    fake_ai.latency_s = 1.2
    fields = text_message("慢", openid="oCopyPush")
    assert gateway.post(fields).data == b"success"  # attempt 1 (past WeChat's 5 s in real life)
    primary.fail_next["claim"] = "before"  # attempt 2's claim times out: the copy
    assert gateway.post(fields).data == b"success"  # attempt 2: its hand-off reaches Redis
    wait_for_the_job(gateway, fields)
    assert sender.sent == [("oCopyPush", {"type": "text", "content": "答：慢"})]
    third = gateway.post(fields)  # attempt 3, WeChat's last
    assert third.data == b"success", gateway.reply_of(third)


@pytest.mark.parametrize("second_claim", ["in_redis", "in_process"])
def test_custom_mode_a_retry_claimed_while_the_hand_off_times_out_is_not_answered_too(
    make_gateway, fake_ai, second_claim
):
    """Attempt 1's hand-off times out without running, and WeChat's retry arrives during
    that timeout. The job pushes the answer by attempt 1's note: the retry, waiting on the
    same job, must answer success, not the answer as well."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    primary = RedisStandIn(hand_off="before")
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.7
    fields = text_message("慢", openid="oRace" + second_claim[3:])
    second: dict = {}

    def retry_meanwhile():
        if second_claim == "in_process":
            primary.fail_next["claim"] = "before"
        poster = threading.Thread(target=lambda: second.update(response=gateway.post(fields)))
        poster.start()
        wait_until(
            lambda: (
                "claim" not in primary.fail_next
                and (second_claim == "in_process" or primary.jobs.get(job_key(fields)).attempt == 2)
            ),
            5,
            "the retry's claim",
        )
        second["poster"] = poster

    primary.while_lost["hand_off"] = retry_meanwhile
    assert gateway.post(fields).data == b"success"  # attempt 1: custom_pending, too late
    second["poster"].join()
    wait_for_the_job(gateway, fields)
    assert second["response"].data == b"success"
    assert sender.sent == [(fields["FromUserName"], {"type": "text", "content": "答：慢"})]


def test_custom_mode_a_retry_on_another_worker_after_an_unconfirmed_hand_off(make_gateway, fake_ai):
    """The job's finish writes its worker's unconfirmed hand-off into Redis with the
    answer, so a retry on another worker answers success, not the answer pushed too."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    other = make_gateway(sender=RecordingSender(), slow_reply_mode="custom", reply_budget_s=0.4)
    primary = RedisStandIn(hand_off="before")
    on_redis(gateway, primary)
    on_redis(other, primary)
    fake_ai.latency_s = 0.7
    fields = text_message("慢", openid="oOtherWorker")
    assert gateway.post(fields).data == b"success"  # attempt 1: its hand-off never ran
    second = other.post(fields)  # attempt 2, on the other worker, while the job runs
    wait_for_the_job(gateway, fields)
    assert second.data == b"success"
    assert len(sender.sent) == 1


def test_custom_mode_a_retry_after_the_job_ended_honours_an_unconfirmed_hand_off(
    make_gateway, fake_ai
):
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    on_redis(gateway, RedisStandIn(hand_off="before"))
    fake_ai.latency_s = 0.6
    fields = text_message("慢", openid="oAfterEnd")
    assert gateway.post(fields).data == b"success"  # attempt 1: hand-off unconfirmed
    wait_for_the_job(gateway, fields)
    assert gateway.post(fields).data == b"success"  # the pushed answer is not sent again
    assert len(sender.sent) == 1 and fake_ai.calls_for(job_key(fields)) == 1


@pytest.mark.parametrize("mode", ["custom", "retry"])
def test_a_retry_waiting_on_a_fallback_answer_gets_the_fallback(make_gateway, fake_ai, mode):
    """The AI failed after attempt 1 handed off: nobody pushes or parks a fallback, so the
    retry, the attempt WeChat is listening to, must reply with it (not success, not the
    placeholder)."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode=mode, reply_budget_s=0.4, max_attempts=1)
    primary = RedisStandIn(hand_off="before")
    on_redis(gateway, primary)
    fake_ai.latency_s = 0.7
    fake_ai.status = 500
    fields = text_message("坏", openid="oFallback" + mode)
    second: dict = {}

    def retry_meanwhile():
        poster = threading.Thread(target=lambda: second.update(response=gateway.post(fields)))
        poster.start()
        wait_until(lambda: primary.jobs.get(job_key(fields)).attempt == 2, 5, "the retry")
        second["poster"] = poster

    primary.while_lost["hand_off"] = retry_meanwhile
    gateway.post(fields)  # attempt 1 hands off: success, or the placeholder
    second["poster"].join()
    wait_for_the_job(gateway, fields)
    assert sender.sent == []
    assert gateway.reply_of(second["response"])["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"


def test_custom_mode_a_retry_after_a_recorded_hand_off_still_gets_a_fallback(make_gateway, fake_ai):
    """Attempt 1's hand-off is in Redis (its success came after WeChat's cut); the retry
    claims while the AI still runs, and the AI then fails: nobody pushes a fallback, so the
    retry must wait for it and reply with it, not answer success at once."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode="custom", reply_budget_s=0.4)
    on_redis(gateway, RedisStandIn())
    fake_ai.latency_s = 0.7
    fake_ai.status = 500
    fields = text_message("坏", openid="oClaimFallback")
    assert gateway.post(fields).data == b"success"  # attempt 1: custom_pending
    second = gateway.post(fields)  # WeChat's retry, the job still running
    wait_for_the_job(gateway, fields)
    assert sender.sent == []
    assert gateway.reply_of(second)["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"


@pytest.mark.parametrize("mode", ["custom", "retry"])
def test_a_lost_hand_off_reply_as_the_job_ends_in_a_fallback_sends_it(make_gateway, fake_ai, mode):
    """The hand-off reached Redis, its reply was lost while the job ended with the fallback:
    the late path never delivers a fallback, so this attempt must."""
    sender = RecordingSender()
    gateway = make_gateway(sender=sender, slow_reply_mode=mode, reply_budget_s=0.3, max_attempts=1)
    fields = text_message("坏", openid="oLostFallback" + mode)
    primary = RedisStandIn(hand_off="after")
    delivery = on_redis(gateway, primary)
    primary.while_lost["hand_off"] = lambda: wait_until(
        lambda: job_key(fields) not in delivery._done, 5, "the job to end meanwhile"
    )
    fake_ai.latency_s = 0.6
    fake_ai.status = 500
    first = gateway.post(fields)
    assert sender.sent == []
    assert gateway.reply_of(first)["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"


def test_a_park_whose_redis_reply_was_lost_is_shown_once(make_gateway, fake_ai):
    """The park ran in Redis and its reply timed out, so the in-process store got a copy too.
    Taking in-process entries on Redis claims (to recover a blip) showed the answer twice,
    and the question asked meanwhile never reached the AI."""
    gateway = make_gateway(
        sender=RecordingSender(refuse=True), slow_reply_mode="custom", reply_budget_s=0.3
    )
    primary = RedisStandIn(park="after")
    on_redis(gateway, primary)
    park_late_answers(gateway, fake_ai, "oLost", "迟到的答案")
    assert not primary.fail_next  # the lost reply happened
    assert said(gateway, "oLost", "好的", "谢谢", "再见") == ["迟到的答案", "答：谢谢", "答：再见"]


def test_a_partial_push_ends_the_wait_as_a_custom_reply(make_gateway, fake_ai):
    """Two of five parts went out, then the push failed: the user's wait ended with the
    pushed start (custom), and the parked rest is not timed again when shown."""

    class PartialSender(RecordingSender):
        def deliver(self, openid, reply):
            super().deliver(openid, reply)
            return {"type": "text", "content": reply["content"][3000:]}  # a new dict: partial

    gateway = make_gateway(sender=PartialSender(), slow_reply_mode="custom", reply_budget_s=0.3)

    def counts(path: str) -> tuple[float, float]:
        text = gateway.client.get("/metrics").data.decode()
        return (
            metric_sum(text, "wechat_replies_total", path=path),
            metric_sum(text, "wechat_time_to_answer_seconds_count", path=path),
        )

    before = counts("custom"), counts("parked")
    park_late_answers(gateway, fake_ai, "oPartial", "部分推送。" * 800)
    said(gateway, "oPartial", "好的")
    after = counts("custom"), counts("parked")
    assert [a - b for a, b in zip(after[0], before[0], strict=True)] == [1, 1]
    assert [a - b for a, b in zip(after[1], before[1], strict=True)] == [1, 0]


def test_unsubscribe_erases_what_a_redis_outage_parked_in_process(make_gateway, fake_ai):
    gateway = make_gateway()
    primary = RedisStandIn()
    delivery = on_redis(gateway, primary)
    user = "gh_0123456789ab:oGone"
    delivery.store.fallback.park(user, {"reply": {"type": "text", "content": "旧答案"}}, 3600)
    gateway.post(event_message("unsubscribe", openid="oGone"))
    assert delivery.store.fallback.pop_parked(user) is None
