"""/metrics of a Gunicorn gateway with two workers adds up what both workers counted."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.exposition import metric_sum
from tests.support.processes import gateway_request_lines, start_gateway
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()


def request_pids(log: str) -> set[int]:
    return {line["pid"] for line in gateway_request_lines(log)}


def test_metrics_add_up_across_two_workers(tmp_path, fake_ai):
    fake_ai.latency_s = 0.2  # keeps connections open so both workers accept some
    gateway = start_gateway(tmp_path, {**ACCOUNT.env(), "AI_API_URL": fake_ai.url}, workers=2)
    try:
        url = gateway.extra["url"] + "/wechat"
        sent = 0
        with ThreadPoolExecutor(16) as pool:
            for _ in range(5):  # bounded: until both workers have served requests
                batch = [text_message(f"m{sent + i}", openid=f"o{sent + i}") for i in range(32)]
                attempts = list(pool.map(lambda f: WeChatSimulator(url, ACCOUNT).post(f), batch))
                assert all(a.verdict == "reply" for a in attempts)
                sent += len(batch)
                if len(request_pids(gateway.log())) >= 2:
                    break
        assert len(request_pids(gateway.log())) == 2, "both workers should have served"
        bad = WeChatSimulator(url, Account(token="wrongtoken"))
        assert bad.post(text_message("forged"), mode="plain").status == 403
        text = requests.get(gateway.extra["url"] + "/metrics", timeout=5).text
        assert metric_sum(text, "wechat_requests_total", method="POST", outcome="ok") == sent
        assert metric_sum(text, "wechat_request_latency_seconds_count", method="POST") == sent + 1
        assert metric_sum(text, "wechat_signature_fail_total", reason="bad_signature") == 1
        assert metric_sum(text, "wechat_ai_request_latency_seconds_count") == sent
        # Known series exist at 0 before their first event, summed over both workers.
        assert 'wechat_replies_total{path="placeholder"} 0.0' in text
        assert 'wechat_decrypt_fail_total{reason="padding"} 0.0' in text
        # No REDIS_URL: no Redis gauge at all, or its 0 would raise RedisUnreachable.
        assert "wechat_redis_up" not in text
    finally:
        gateway.stop()
