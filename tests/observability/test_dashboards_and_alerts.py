"""The proof: every dashboard panel shows data and every alert rule evaluates, in a real Prometheus.

Grafana cannot be installed here, so the dashboards are proven through what they ask of
Prometheus. The process stack runs on loopback: Redis, the AI API (Uvicorn) with a fake
OpenAI-compatible LLM, two gateway replicas (Gunicorn, two workers each, production config)
plus a third in customer-service mode against a fake WeChat API, nginx (the real infra/nginx
config, rendered for loopback, with a certificate) in front of the first replica, the
redis/nginx/blackbox exporters, Alertmanager and the alert relay. A real Prometheus
scrapes all of it with a loopback copy of infra/prometheus/prometheus.yml and loads the real
rules. Traffic: good, bad-signature, undecryptable, duplicate, slow, LLM-broken, AI-down.
Then every panel target is run as Grafana would (query_range over the traffic) and must
return a number; every alert expression must evaluate, and every rule must be healthy.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.observability import stack
from tests.support.fake_wechat_api import FakeWeChatApi
from tests.support.processes import start_ai_api, start_gateway, start_redis, wait_until
from tests.support.promql import (
    EXPORTER_METRICS,
    RULES_DIR,
    alert_queries,
    alert_rules,
    dashboard_queries,
    metric_names,
)
from tests.support.tls import verified_session
from tests.support.wechat import Account, WeChatSimulator, sign, text_message
from tests.support.wecom import fake_wecom_robot

pytestmark = pytest.mark.integration

ACCOUNT = Account()
# Grafana's $__rate_interval is max(4 x scrape interval, step); the proof scrapes every 1 s.
RATE_INTERVAL = "10s"


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole stack, the traffic sent through it, and the time range it covers."""
    log_dir = tmp_path_factory.mktemp("observability")
    procs: list[Any] = []
    wechat_api = FakeWeChatApi(ACCOUNT.appid, "fake-secret").start()
    try:
        with (
            stack.fake_llm() as llm,
            fake_wecom_robot() as robot,
        ):
            redis = start_redis(log_dir)
            procs.append(redis)
            ai_env = {
                "LLM_BASE_URL": llm.url,
                "LLM_API_KEY": "test-key",
                "LLM_MODEL": "fake",
                "REDIS_URL": redis.extra["url"].replace("/0", "/1"),
            }
            ai = start_ai_api(log_dir, ai_env)
            procs.append(ai)
            gateway_env = {
                **ACCOUNT.env(),
                "AI_API_URL": ai.extra["url"],
                "REDIS_URL": redis.extra["url"],
            }
            gateways = [start_gateway(log_dir, gateway_env, name=f"gw{i}") for i in (1, 2)]
            procs += gateways
            custom = start_gateway(
                log_dir,
                {
                    **gateway_env,
                    "WECHAT_SLOW_REPLY_MODE": "custom",
                    "WECHAT_APPSECRET": "fake-secret",
                    "WECHAT_API_BASE": wechat_api.url,
                },
                name="gw-custom",
            )
            procs.append(custom)
            nginx = stack.start_real_nginx(log_dir, f"127.0.0.1:{gateways[0].port}")
            procs.append(nginx)
            exporters = {
                "redis": stack.start_redis_exporter(log_dir, redis.port),
                "nginx": stack.start_nginx_exporter(log_dir, nginx.extra["stub_status"]),
                "blackbox": stack.start_blackbox_exporter(log_dir),
            }
            procs += exporters.values()
            relay = stack.start_relay(log_dir, robot.webhook_url)
            procs.append(relay)
            alertmanager = stack.start_alertmanager(
                log_dir, stack.alertmanager_config(relay.extra["url"])
            )
            procs.append(alertmanager)

            def hostport(proc: Any) -> str:
                return f"127.0.0.1:{proc.port}"

            targets = {
                "prometheus": [],  # start_prometheus fills in its own port
                "wechat-gateway": [hostport(g) for g in [*gateways, custom]],
                "ai-api": [hostport(ai)],
                "redis": [hostport(exporters["redis"])],
                "nginx": [hostport(exporters["nginx"])],
                "alertmanager": [hostport(alertmanager)],
                "alert-relay": [hostport(relay)],
                "tls-certificate": [nginx.extra["tls"]],
            }
            config = stack.prometheus_config(
                targets,
                rule_files=[str(p) for p in sorted(RULES_DIR.glob("*.yml"))],
                alertmanager=hostport(alertmanager),
                blackbox=hostport(exporters["blackbox"]),
            )
            prometheus = stack.start_prometheus(log_dir, config)
            procs.append(prometheus)
            url = prometheus.extra["url"]

            wait_until(lambda: all_targets_up(url), 30, "every scrape target up")
            started = time.time()
            send_traffic(url, nginx, gateways, custom, ai, wechat_api)
            settle(url)
            yield {
                "url": url,
                "start": started,
                "end": time.time(),
                "robot": robot,
            }
    finally:
        for proc in reversed(procs):
            proc.stop()
        wechat_api.stop()


def all_targets_up(url: str) -> bool:
    active = stack.api(url, "targets")["activeTargets"]
    return bool(active) and all(t["health"] == "up" for t in active)


def scalar(url: str, query: str) -> float:
    result = stack.api(url, "query", query=query)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def undecryptable(sim: WeChatSimulator) -> tuple[dict[str, str], bytes]:
    """A callback whose msg_signature is right but whose Encrypt is not ours (decrypt fails)."""
    params, _ = sim.build_request(text_message("解不开"))
    garbage = base64.b64encode(secrets.token_bytes(48)).decode()
    params["msg_signature"] = sign(ACCOUNT.token, params["timestamp"], params["nonce"], garbage)
    body = (
        f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{garbage}]]>"
        "</Encrypt></xml>"
    )
    return params, body.encode()


def settle(url: str) -> None:
    """Wait until Prometheus has scraped every target after this moment (an event, not a sleep)."""
    now = time.time()
    wait_until(lambda: scalar(url, "min(timestamp(up))") > now, 15, "a scrape of every target")


def send_traffic(
    url: str, nginx: Any, gateways: list[Any], custom: Any, ai: Any, wechat_api: Any
) -> None:
    """Traffic in phases with a scrape between them, so every counter is seen rising.

    A series appears with its first increment; a burst between two scrapes would show up
    already at its final value, and a rate over it would be zero.
    """
    # the first replica through nginx (TLS), the second directly, as nginx's upstream would
    sims = [WeChatSimulator(nginx.extra["url"] + "/wechat", ACCOUNT)]
    sims[0].session = verified_session(nginx.extra["cafile"])  # trust the test's certificate
    sims += [WeChatSimulator(g.extra["url"] + "/wechat", ACCOUNT) for g in gateways[1:]]
    custom_sim = WeChatSimulator(custom.extra["url"] + "/wechat", ACCOUNT)
    stranger = WeChatSimulator(gateways[0].extra["url"] + "/wechat", Account(token="not-ours"))
    same = text_message("重复投递的问题")
    for phase in range(2):
        # good: answered on the first attempt, through both replicas
        for i in range(4):
            delivery = sims[i % 2].deliver(text_message(f"你们的营业时间是什么？{phase}-{i}"))
            assert delivery.attempts[0].verdict == "reply", delivery
        # bad signature: a caller that does not know the token
        assert stranger.post(text_message("伪造")).status == 403
        # undecryptable: right signature, wrong ciphertext
        params, body = undecryptable(sims[1])
        assert sims[1].post_raw(params, body).status in (400, 403)
        # duplicate: the same message to both replicas, one after the other
        sims[0].post(same)
        sims[1].post(same)
        settle(url)

    # slow, LLM-broken and customer-service mode, twice, at once (the slow ones take seconds)
    for _ in range(2):
        pushed_before = len(wechat_api.sent)
        with ThreadPoolExecutor(3) as pool:
            slow = pool.submit(sims[0].deliver, text_message(f"{stack.SLOW_WORD}一点的问题"))
            broken = pool.submit(sims[1].deliver, text_message(f"{stack.BROKEN_WORD}掉的模型"))
            pushed = pool.submit(custom_sim.post, text_message(f"{stack.SLOW_WORD}，请客服推送"))
            slow_delivery, broken_delivery = slow.result(), broken.result()
            pushed_attempt = pushed.result()
        assert len(slow_delivery.attempts) >= 2, "the slow answer arrives on a retry"
        assert slow_delivery.attempts[-1].verdict == "reply"
        assert broken_delivery.attempts[0].verdict == "reply", "the knowledge base answers"
        assert pushed_attempt.verdict == "success"
        wechat_api.wait_for_sent(pushed_before + 1, timeout_s=20)
        assert len(wechat_api.sent) > pushed_before, "the customer-service push"
        settle(url)
    # AI API down: the gateway answers with its fallback text
    ai.stop()
    for _ in range(2):
        delivery = sims[0].deliver(text_message("AI 不在的时候"))
        assert delivery.attempts[0].verdict == "reply"
        settle(url)


# -- the proof ---------------------------------------------------------------------------------
def test_every_alert_rule_is_loaded_and_evaluates_without_error(proof):
    url = proof["url"]
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict[str, Any]]:
        rules = [
            r
            for g in stack.api(url, "rules")["groups"]
            for r in g["rules"]
            if r["type"] == "alerting"
        ]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else []

    wait_until(lambda: bool(evaluated()), 20, "every rule evaluated once")
    rules = evaluated()
    assert {r["name"] for r in rules} == expected
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy


@pytest.mark.parametrize("query", alert_queries(), ids=lambda q: q.where)
def test_every_alert_expression_evaluates(proof, query):
    stack.api(proof["url"], "query", query=query.expr)  # raises with Prometheus's error


@pytest.mark.parametrize("query", dashboard_queries(RATE_INTERVAL), ids=lambda q: q.where)
def test_every_dashboard_query_returns_data(proof, query):
    data = stack.api(
        proof["url"],
        "query_range",
        query=query.expr,
        start=proof["start"],
        end=proof["end"] + 2,
        step="1s",
    )
    numbers = [
        float(v)
        for series in data["result"]
        for _, v in series["values"]
        if not math.isnan(float(v))
    ]
    assert numbers, f"{query.where} shows nothing: {query.expr}"


def test_every_metric_the_files_name_is_really_exposed(proof):
    live = set(stack.api(proof["url"], "label/__name__/values"))
    named = set()
    for query in [*alert_queries(), *dashboard_queries(RATE_INTERVAL)]:
        named |= metric_names(query.expr)
    assert named - live == set()
    assert set(EXPORTER_METRICS) - live == set()


def test_every_gateway_replica_is_its_own_target(proof):
    up = stack.api(proof["url"], "query", query='up{job="wechat-gateway"}')["result"]
    assert len(up) == 3
    replicas = scalar(proof["url"], "count(count by (instance) (wechat_requests_total))")
    assert replicas == 3
