"""An AI API that errors, hangs or is down, behind a real Gunicorn gevent gateway.

In-process tests cover the client; these go through the transport the gevent worker
really uses (geventhttpclient), its timeouts and its pool: the user gets
WECHAT_FALLBACK_REPLY in time, and wechat_ai_errors_total says why.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.exposition import metric_sum
from tests.support.processes import free_port, start_gateway, wait_until
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()
FALLBACK = "系统繁忙，请稍后再试。"


def _gateway(tmp_path, ai_url: str):
    env = {
        **ACCOUNT.env(),
        "AI_API_URL": ai_url,
        "WECHAT_SLOW_REPLY_MODE": "off",  # one attempt: answer or fallback within the budget
        "WECHAT_REPLY_BUDGET": "1",
        "WECHAT_FALLBACK_REPLY": FALLBACK,
    }
    return start_gateway(tmp_path, env, workers=1)


def _ai_errors(gateway, reason: str) -> float:
    text = requests.get(gateway.extra["url"] + "/metrics", timeout=5).text
    return metric_sum(text, "wechat_ai_errors_total", reason=reason)


def test_an_erroring_or_hanging_ai_api_gives_the_fallback(tmp_path, fake_ai):
    gateway = _gateway(tmp_path, fake_ai.url)
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        assert sim.post(text_message("正常")).reply["Content"] == "答：正常"

        fake_ai.status = 500
        assert sim.post(text_message("出错")).reply["Content"] == FALLBACK
        assert _ai_errors(gateway, "http_status") == 1

        fake_ai.status, fake_ai.latency_s = 200, 4.0
        started = time.monotonic()
        assert sim.post(text_message("很慢")).reply["Content"] == FALLBACK
        assert time.monotonic() - started < 2.0  # the budget (1 s), not the AI's 4 s
        wait_until(lambda: _ai_errors(gateway, "timeout") == 1, 5, "the AI call to time out")

        fake_ai.latency_s = 0.0  # the pool still serves after a timed-out connection
        assert sim.post(text_message("恢复")).reply["Content"] == "答：恢复"
    finally:
        gateway.stop()


def test_an_ai_api_that_is_down_gives_the_fallback(tmp_path):
    gateway = _gateway(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        assert sim.post(text_message("有人吗")).reply["Content"] == FALLBACK
        assert _ai_errors(gateway, "connection") == 1
    finally:
        gateway.stop()
