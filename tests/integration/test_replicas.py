"""Two gateway replicas behind a real Nginx (round robin) sharing one real redis-server.

A slow answer is computed once and delivered by whichever replica receives WeChat's retry;
when the replica that owns the job is killed mid-answer, its lease lapses, the replica
holding the next attempt takes the job over, and the user still gets the answer.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import redis

from tests.support.processes import (
    Process,
    free_port,
    gateway_log_lines,
    gateway_request_lines,
    require_binary,
    start_gateway,
    start_process,
    wait_until,
)
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()


def start_round_robin_nginx(workdir: Path, upstreams: list[str]) -> Process:
    """Nginx on loopback balancing /wechat over `upstreams` with keep-alive connections."""
    nginx = require_binary("nginx", "apt-get install nginx")
    port = free_port()
    conf_dir = workdir / "nginx-rr"
    conf_dir.mkdir()
    servers = "\n".join(f"        server {address};" for address in upstreams)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {k}_temp_path {conf_dir}/{k}_temp;"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (conf_dir / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {conf_dir}/nginx.pid;\n"
        f"error_log {conf_dir}/error.log info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n{temp}\n    access_log {conf_dir}/access.log;\n"
        f"    upstream gateways {{\n{servers}\n        keepalive 8;\n"
        f"        keepalive_timeout 4s;\n    }}\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        f"        location = /wechat {{\n            proxy_pass http://gateways;\n"
        f'            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'
        f"            proxy_connect_timeout 2s;\n            proxy_read_timeout 10s;\n"
        f"            proxy_next_upstream error timeout;\n        }}\n    }}\n}}\n"
    )
    proc = start_process(
        "nginx-rr",
        [nginx, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")],
        workdir,
        port=port,
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}/wechat"
    return proc


@pytest.fixture
def replicas(tmp_path, fake_ai, redis_server):
    env = {**ACCOUNT.env(), "AI_API_URL": fake_ai.url, "REDIS_URL": redis_server.extra["url"]}
    gateways = [start_gateway(tmp_path, env, name=f"replica{i}") for i in range(2)]
    nginx = start_round_robin_nginx(tmp_path, [g.extra["url"][7:] for g in gateways])
    yield gateways, nginx
    nginx.stop()
    for gateway in gateways:
        gateway.stop()


def key_of(fields: dict[str, str]) -> str:
    return f"msg:{fields['MsgId']}:{fields['FromUserName']}:{fields['CreateTime']}"


def test_slow_answer_computed_once_and_delivered_by_either_replica(replicas, fake_ai):
    gateways, nginx = replicas
    fake_ai.latency_s = 7.0
    sims = [WeChatSimulator(nginx.extra["url"], ACCOUNT) for _ in range(4)]
    messages = [text_message(f"慢问题{i}", openid=f"oRep{i}") for i in range(4)]
    results: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, sims[i].deliver(messages[i])))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for i, fields in enumerate(messages):
        delivery = results[i]
        assert delivery.user_sees == f"答：慢问题{i}"
        assert len(delivery.attempts) == 2  # cut at 5 s, answered on WeChat's retry
        assert fake_ai.calls_for(key_of(fields)) == 1
    # Round robin spread the eight attempts over both replicas: each held or answered some.
    for gateway in gateways:
        lines = gateway_request_lines(gateway.log())
        assert any(line.get("path") == "retry" or line["outcome"] == "held" for line in lines)


def test_answer_arrives_when_the_owning_replica_is_killed(replicas, fake_ai, redis_server):
    gateways, nginx = replicas
    fake_ai.latency_s = 3.0
    store = redis.Redis.from_url(redis_server.extra["url"])
    fields = text_message("主人会死", openid="oOrphan")
    job_key = f"cn:gw:job:{key_of(fields)}"
    result: dict[str, object] = {}
    sim = WeChatSimulator(nginx.extra["url"], ACCOUNT)
    thread = threading.Thread(target=lambda: result.__setitem__("d", sim.deliver(fields)))
    thread.start()
    wait_until(lambda: store.hget(job_key, "owner") is not None, 5, "the job to be claimed")
    owner_pid = int(store.hget(job_key, "owner").decode().split(":")[1])
    owner = next(g for g in gateways if _is_child(owner_pid, g.popen.pid))
    owner.stop(signal.SIGKILL)  # the whole replica, mid-answer
    thread.join(timeout=30)
    delivery = result["d"]
    assert delivery.user_sees == "答：主人会死"
    survivor = next(g for g in gateways if g is not owner)
    assert any(line.get("event") == "job_takeover" for line in gateway_log_lines(survivor.log()))
    assert 1 <= fake_ai.calls_for(key_of(fields)) <= 2


def _is_child(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent
