"""alert_relay.server against a fake WeCom robot on 127.0.0.1: deliver, retry, reject."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from alert_relay.config import Settings
from alert_relay.server import create_server
from tests.relay.test_render import PAYLOAD
from tests.support.wecom import fake_wecom_robot


@contextmanager
def running_relay(webhook_url: str) -> Iterator[str]:
    server = create_server(Settings(wecom_webhook_url=webhook_url, port=0, send_timeout_s=2))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_a_notification_reaches_the_robot_as_markdown():
    with fake_wecom_robot() as robot, running_relay(robot.webhook_url) as relay:
        status, _ = post(f"{relay}/alertmanager", json.dumps(PAYLOAD).encode())
        assert status == 200
        [message] = robot.messages()
        assert message["msgtype"] == "markdown"
        assert "**WeChatSignatureFailuresHigh**" in message["markdown"]["content"]
        assert 'alert_relay_notifications_total{result="sent"} 1' in get(f"{relay}/metrics")


def test_a_refusing_robot_gets_502_so_alertmanager_retries():
    with fake_wecom_robot() as robot, running_relay(robot.webhook_url) as relay:
        robot.errcode = 45009  # WeCom's rate limit: 20 messages a minute per robot
        status, text = post(f"{relay}/alertmanager", json.dumps(PAYLOAD).encode())
        assert (status, text.strip()) == (502, "WeCom errcode 45009: busy")
        robot.errcode = 0
        assert post(f"{relay}/alertmanager", json.dumps(PAYLOAD).encode())[0] == 200
        metrics = get(f"{relay}/metrics")
        assert 'result="failed"} 1' in metrics
        assert 'result="sent"} 1' in metrics


def test_an_unreachable_robot_gets_502_without_leaking_the_key():
    with running_relay("http://127.0.0.1:9/cgi-bin/webhook/send?key=secret-key") as relay:
        status, text = post(f"{relay}/alertmanager", json.dumps(PAYLOAD).encode())
        assert status == 502
        assert "secret-key" not in text


def test_bodies_that_are_not_notifications_get_400_and_are_not_sent():
    with fake_wecom_robot() as robot, running_relay(robot.webhook_url) as relay:
        assert post(f"{relay}/alertmanager", b"{not json")[0] == 400
        assert post(f"{relay}/alertmanager", b'{"status": "firing"}')[0] == 400
        assert post(f"{relay}/elsewhere", b"{}")[0] == 404
        assert robot.messages() == []
        assert 'result="rejected"} 2' in get(f"{relay}/metrics")


def test_health():
    with running_relay("http://127.0.0.1:9/") as relay:
        assert get(f"{relay}/health") == "ok\n"
