"""Fixtures of the AI API tests: Settings objects, apps and clients built from them, a fake LLM."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from celestial_nexus.api import create_app
from celestial_nexus.config import DEFAULT_KB_DIR, Settings
from tests.ai_api.fake_llm import FakeLLM
from tests.ai_api.tcp_proxy import TcpProxy

MakeClient = Callable[..., TestClient]


def message(msg_type: str, openid: str = "oUser1", **fields: object) -> dict:
    """A normalized message of any type, as the gateway sends it."""
    return {
        "schema_version": 1,
        "msg_id": "1001",
        "dedup_key": f"msg:1001:{openid}:1714036504",
        "type": msg_type,
        "openid": openid,
        "account_id": "gh_0123456789ab",
        "create_time": 1714036504,
        **fields,
    }


def text_message(content: str, openid: str = "oUser1", **extra: object) -> dict:
    return message("text", openid, content=content, **extra)


def event_message(event: str, event_key: str | None = None, openid: str = "oUser1") -> dict:
    return {
        "schema_version": 1,
        "dedup_key": f"evt:{openid}:1714036504:{event}:{event_key or ''}",
        "type": "event",
        "openid": openid,
        "account_id": "gh_0123456789ab",
        "create_time": 1714036504,
        "event": event,
        "event_key": event_key,
    }


@pytest.fixture
def base_settings() -> Settings:
    """The shipped defaults: sample KB, no LLM, no Redis."""
    return Settings(log_level="DEBUG", kb_reload_interval_s=0.05)


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    """A writable copy of the sample knowledge base."""
    target = tmp_path / "kb"
    shutil.copytree(DEFAULT_KB_DIR, target)
    return target


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def llm_settings(base_settings: Settings, fake_llm: FakeLLM) -> Settings:
    return replace(
        base_settings,
        llm_base_url=fake_llm.base_url,
        llm_api_key="sk-test-secret-key-123",
        llm_model="fake-model",
        llm_timeout_s=2.0,
    )


@pytest.fixture
def redis_proxy(redis_server) -> Iterator[TcpProxy]:
    """A real redis-server behind a proxy the test can cut (an outage that keeps the data)."""
    proxy = TcpProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """Build a started TestClient from a Settings object; every client is closed at the end."""
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def reply_text(response) -> str:
    assert response.status_code == 200, response.text
    reply = response.json()["reply"]
    assert reply is not None and reply["type"] == "text", reply
    return reply["content"]


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric_name, _, label_text = sample.partition("{")
        if metric_name != name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if got == want:
            return float(value)
    return 0.0
