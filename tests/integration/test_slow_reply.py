"""Slow AI answers reach the user across WeChat's retries, in both slow-reply modes.

The simulator behaves as WeChat does (5-second cut, up to three attempts of the same
MsgId) and reports what the user finally sees. The fake AI API answers after 1, 7, 12 or
20 seconds; the four conversations of a mode run at the same time against one gateway.
"""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.support.fake_wechat_api import FakeWeChatApi
from tests.support.processes import start_gateway, wait_until
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()
PLACEHOLDER = "正在思考，请稍后发送任意消息获取回复。"
LATENCIES_S = (1, 7, 12, 20)


def latency_from_content(message: dict) -> float:
    content = message.get("content") or ""
    return float(content.split(":")[1]) if content.startswith("latency:") else 0.0


def key_of(fields: dict[str, str]) -> str:
    return f"msg:{fields['MsgId']}:{fields['FromUserName']}:{fields['CreateTime']}"


def run_conversations(url: str, scenario) -> dict[int, object]:
    with ThreadPoolExecutor(len(LATENCIES_S)) as pool:
        futures = {s: pool.submit(scenario, WeChatSimulator(url, ACCOUNT), s) for s in LATENCIES_S}
        return {s: f.result() for s, f in futures.items()}


def replies_by_path(metrics_text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("wechat_replies_total{"):
            path = line.split('path="')[1].split('"')[0]
            totals[path] = totals.get(path, 0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_retry_mode_every_user_gets_the_answer(tmp_path, fake_ai, redis_server):
    fake_ai.latency_for = latency_from_content
    env = {**ACCOUNT.env(), "AI_API_URL": fake_ai.url, "REDIS_URL": redis_server.extra["url"]}
    gateway = start_gateway(tmp_path, env)
    store = redis.Redis.from_url(redis_server.extra["url"])

    def conversation(sim: WeChatSimulator, latency: int):
        openid = f"oRetry{latency}"
        fields = text_message(f"latency:{latency}", openid=openid)
        first = sim.deliver(fields)
        follow_up = None
        if latency == 20:  # the answer comes after the last attempt: parked, then delivered
            wait_until(
                lambda: store.exists(f"cn:gw:parked:{fields['ToUserName']}:{openid}"),
                15,
                "the late answer to be parked",
            )
            follow_up = sim.deliver(text_message("在吗", openid=openid))
        return fields, first, follow_up

    try:
        results = run_conversations(gateway.extra["url"] + "/wechat", conversation)
        expected_attempts = {1: 1, 7: 2, 12: 3, 20: 3}
        for latency, (fields, first, follow_up) in results.items():
            answer = f"答：latency:{latency}"
            assert len(first.attempts) == expected_attempts[latency], latency
            assert fake_ai.calls_for(key_of(fields)) == 1, latency
            if latency < 20:
                assert first.user_sees == answer, latency
                assert all(a.elapsed_s < 5.0 for a in first.attempts if a.verdict == "reply")
            else:
                assert first.user_sees == PLACEHOLDER
                assert follow_up.user_sees == answer  # the parked answer, on the next message
                assert len(follow_up.attempts) == 1
        assert not any(m.get("content") == "在吗" for m in fake_ai.received)
        paths = replies_by_path(requests.get(gateway.extra["url"] + "/metrics", timeout=5).text)
        assert paths.get("first_attempt") == 1 and paths.get("retry") == 2
        assert paths.get("placeholder") == 1 and paths.get("parked") == 1
    finally:
        gateway.stop()


def test_custom_mode_success_then_a_customer_service_message(tmp_path, fake_ai, redis_server):
    fake_ai.latency_for = latency_from_content
    api = FakeWeChatApi(ACCOUNT.appid, "app-secret-1").start()
    env = {
        **ACCOUNT.env(),
        "AI_API_URL": fake_ai.url,
        "REDIS_URL": redis_server.extra["url"],
        "WECHAT_SLOW_REPLY_MODE": "custom",
        "WECHAT_APPSECRET": "app-secret-1",
        "WECHAT_API_BASE": api.url,
    }
    gateway = start_gateway(tmp_path, env)

    def conversation(sim: WeChatSimulator, latency: int):
        fields = text_message(f"latency:{latency}", openid=f"oCustom{latency}")
        return fields, sim.deliver(fields)

    try:
        results = run_conversations(gateway.extra["url"] + "/wechat", conversation)
        api.wait_for_sent(3, timeout_s=30)
        for latency, (fields, delivery) in results.items():
            answer = f"答：latency:{latency}"
            assert len(delivery.attempts) == 1, latency  # WeChat never needs to retry
            assert fake_ai.calls_for(key_of(fields)) == 1
            if latency == 1:
                assert delivery.user_sees == answer
                assert api.texts_to(fields["FromUserName"]) == []
            else:
                assert delivery.user_sees is None  # `success`: nothing shown yet
                assert delivery.attempts[0].elapsed_s < 5.0
                assert api.texts_to(fields["FromUserName"]) == [answer]
        assert api.token_fetches == 1
        metrics_url = gateway.extra["url"] + "/metrics"
        wait_until(  # counted right after WeChat's API answered the last send
            lambda: (
                'wechat_custom_send_total{result="ok"} 3.0'
                in requests.get(metrics_url, timeout=5).text
            ),
            5,
            "three successful sends to be counted",
        )
        events = [
            json.loads(line).get("event")
            for line in gateway.log().splitlines()
            if line.startswith("{")
        ]
        assert events.count("custom_pending") == 3
    finally:
        gateway.stop()
        api.stop()


def custom_mode_env(fake_ai, redis_server, api: FakeWeChatApi) -> dict[str, str]:
    return {
        **ACCOUNT.env(),
        "AI_API_URL": fake_ai.url,
        "REDIS_URL": redis_server.extra["url"],
        "WECHAT_SLOW_REPLY_MODE": "custom",
        "WECHAT_APPSECRET": "app-secret-1",
        "WECHAT_API_BASE": api.url,
        "WECHAT_REPLY_BUDGET": "0.5",
    }


def log_events(gateway) -> list[str]:
    return [
        json.loads(line).get("event") for line in gateway.log().splitlines() if line.startswith("{")
    ]


def test_a_gateway_told_to_stop_still_pushes_the_answer_it_promised(
    tmp_path, fake_ai, redis_server
):
    """docker stop, a deploy or a reload (SIGTERM to Gunicorn's master) right after the
    `success`: the worker stays until the answer is pushed, then exits on its own."""
    fake_ai.latency_s = 2.0
    api = FakeWeChatApi(ACCOUNT.appid, "app-secret-1").start()
    gateway = start_gateway(tmp_path, custom_mode_env(fake_ai, redis_server, api))
    try:
        fields = text_message("停机前的问题", openid="oDrain")
        delivery = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT).deliver(fields)
        assert delivery.user_sees is None  # `success`: the answer is promised, not sent
        gateway.popen.send_signal(signal.SIGTERM)
        gateway.popen.wait(timeout=15)
        assert api.texts_to("oDrain") == ["答：停机前的问题"]
        assert "drained" in log_events(gateway)
    finally:
        gateway.stop()
        api.stop()


def test_a_quick_shutdown_waits_for_no_answer(tmp_path, fake_ai, redis_server):
    """Ctrl-C (SIGINT) in `make run` means now: no drain, whatever is still running."""
    fake_ai.latency_s = 4.0
    api = FakeWeChatApi(ACCOUNT.appid, "app-secret-1").start()
    gateway = start_gateway(tmp_path, custom_mode_env(fake_ai, redis_server, api))
    try:
        fields = text_message("马上停", openid="oQuick")
        WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT).deliver(fields)
        gateway.popen.send_signal(signal.SIGINT)
        gateway.popen.wait(timeout=15)
        assert fake_ai.completed == []  # gone while the AI was still thinking
        assert "drain" not in log_events(gateway)
    finally:
        gateway.stop()
        api.stop()
