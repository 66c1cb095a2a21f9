"""Dedup across workers and processes through a real redis-server, and surviving its loss."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.processes import start_gateway, start_redis, wait_until
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()


def gateway_env(ai_url: str, redis_url: str | None) -> dict[str, str]:
    env = {**ACCOUNT.env(), "AI_API_URL": ai_url, "LOG_LEVEL": "INFO"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def send_concurrently(simulators: list[WeChatSimulator], fields: dict[str, str]):
    """The same callback (same MsgId) sent at once through each simulator."""
    params_body = [sim.build_request(fields) for sim in simulators]
    with ThreadPoolExecutor(len(simulators)) as pool:
        futures = [
            pool.submit(sim.post_raw, params, body)
            for sim, (params, body) in zip(simulators, params_body, strict=True)
        ]
        return [f.result() for f in futures]


def key_of(fields: dict[str, str]) -> str:
    return f"msg:{fields['MsgId']}:{fields['FromUserName']}:{fields['CreateTime']}"


def test_concurrent_duplicates_call_the_ai_once_and_get_the_same_reply(
    tmp_path, fake_ai, redis_server
):
    fake_ai.latency_s = 1.0  # the duplicate arrives while the first is still in flight
    gateway = start_gateway(tmp_path, gateway_env(fake_ai.url, redis_server.extra["url"]))
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        fields = text_message("只问一次")
        attempts = send_concurrently([sim, WeChatSimulator(sim.url, ACCOUNT)], fields)
        assert [a.verdict for a in attempts] == ["reply", "reply"]
        assert attempts[0].reply["Content"] == attempts[1].reply["Content"] == "答：只问一次"
        assert fake_ai.calls_for(key_of(fields)) == 1
    finally:
        gateway.stop()


def test_two_gateway_processes_sharing_redis_call_the_ai_once_per_key(
    tmp_path, fake_ai, redis_server
):
    fake_ai.latency_s = 0.5
    env = gateway_env(fake_ai.url, redis_server.extra["url"])
    gateways = [start_gateway(tmp_path, env, name=f"gw{i}") for i in range(2)]
    try:
        sims = [WeChatSimulator(g.extra["url"] + "/wechat", ACCOUNT) for g in gateways]
        for n in range(5):
            fields = text_message(f"问题{n}", openid=f"oUser{n}")
            attempts = send_concurrently(sims, fields)
            assert {a.reply["Content"] for a in attempts} == {f"答：问题{n}"}
            assert fake_ai.calls_for(key_of(fields)) == 1
    finally:
        for g in gateways:
            g.stop()


def test_redis_killed_mid_test_the_gateway_keeps_answering(tmp_path, fake_ai):
    redis_proc = start_redis(tmp_path)
    port = redis_proc.port
    gateway = start_gateway(tmp_path, gateway_env(fake_ai.url, redis_proc.extra["url"]))
    health_url = gateway.extra["url"] + "/health"
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        assert sim.post(text_message("before")).reply["Content"] == "答：before"
        redis_proc.kill()
        for n in range(6):
            attempt = sim.post(text_message(f"during {n}"))
            assert attempt.verdict == "reply" and attempt.reply["Content"] == f"答：during {n}"
        # Without Redis the in-process store still replays a retry to the same worker.
        wait_until(
            lambda: requests.get(health_url, timeout=2).json()["components"]["redis"] == "down",
            10,
            "health to report redis down",
        )
        metrics = requests.get(gateway.extra["url"] + "/metrics", timeout=2).text
        assert "wechat_redis_up 0.0" in metrics
        redis_proc = start_redis(tmp_path, port=port)  # Redis comes back on the same port
        wait_until(
            lambda: requests.get(health_url, timeout=2).json()["components"]["redis"] == "ok",
            10,
            "health to report redis ok",
        )
        assert sim.post(text_message("after")).reply["Content"] == "答：after"
        log_events = [
            json.loads(line).get("event")
            for line in gateway.log().splitlines()
            if line.startswith("{")
        ]
        assert "redis_down" in log_events
    finally:
        gateway.stop()
        redis_proc.stop()


def test_a_late_answer_begun_while_redis_was_down_is_parked_once_redis_is_back(tmp_path, fake_ai):
    """The job is claimed in-process (Redis down), the placeholder goes out, Redis comes
    back, then the AI answers: the answer must meet the placeholder's hand-off flag in the
    store that claimed the job, be parked, and reach the user with their next message."""
    redis_proc = start_redis(tmp_path)
    env = {**gateway_env(fake_ai.url, redis_proc.extra["url"]), "WECHAT_REPLY_BUDGET": "1"}
    gateway = start_gateway(tmp_path, env, workers=1)
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        redis_proc.stop()
        fake_ai.latency_s = 4.0  # answered after the in-process store's 2 s pause is over
        # WeChat's last attempt (10 s after CreateTime): the placeholder, not a hold.
        question = text_message("停电时问的", openid="oBack", create_time=int(time.time()) - 10)
        assert sim.post(question).reply["Content"].startswith("正在思考")
        redis_proc = start_redis(tmp_path, port=redis_proc.port)
        wait_until(lambda: '"event":"parked"' in gateway.log(), 10, "the late answer parked")
        fake_ai.latency_s = 0
        follow_up = sim.post(text_message("在吗", openid="oBack"))
        assert follow_up.reply["Content"] == "答：停电时问的"
    finally:
        gateway.stop()
        redis_proc.stop()


def test_without_redis_the_default_is_one_worker_so_every_retry_finds_the_job(tmp_path, fake_ai):
    """With two workers and no Redis, a retry that reached the other worker asked the AI again
    (and an answer parked in one worker was missed by the next message in the other)."""
    fake_ai.latency_s = 0.5  # the copies overlap, so two workers would both accept some
    gateway = start_gateway(
        tmp_path, {**gateway_env(fake_ai.url, None), "GUNICORN_WORKERS": ""}, name="no-redis"
    )
    try:
        sim = WeChatSimulator(gateway.extra["url"] + "/wechat", ACCOUNT)
        fields = text_message("单进程去重")
        attempts = send_concurrently([WeChatSimulator(sim.url, ACCOUNT) for _ in range(12)], fields)
        assert [a.verdict for a in attempts] == ["reply"] * 12
        assert fake_ai.calls_for(key_of(fields)) == 1
        workers = subprocess.run(
            ["pgrep", "-P", str(gateway.popen.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(workers) == 1
    finally:
        gateway.stop()


def test_two_workers_without_redis_are_warned_about(tmp_path, fake_ai):
    gateway = start_gateway(tmp_path, gateway_env(fake_ai.url, None), workers=2, name="warned")
    gateway.stop()
    assert "GUNICORN_WORKERS=2 without REDIS_URL" in gateway.log()
