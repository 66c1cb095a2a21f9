"""The AI API as it runs in production: Uvicorn importing celestial_nexus.api:app, configured
by environment variables only, against a real redis-server and a fake LLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from celestial_nexus.config import DEFAULT_KB_DIR
from tests.ai_api.conftest import text_message
from tests.ai_api.fake_llm import FakeLLM
from tests.support.processes import (
    AI_API_DIR,
    VENV_BIN,
    start_ai_api,
    wait_until,
)

pytestmark = pytest.mark.integration


def post(url: str, body: dict, deadline_ms: int | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if deadline_ms is not None:
        headers["X-Reply-Deadline-Ms"] = str(deadline_ms)
    request = urllib.request.Request(
        f"{url}/v1/reply", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def get(url: str, path: str) -> str:
    with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def llm():
    server = FakeLLM().start()
    yield server
    server.stop()


def test_uvicorn_serves_answers_health_and_metrics(tmp_path, redis_server, llm):
    kb_dir = tmp_path / "kb"
    shutil.copytree(DEFAULT_KB_DIR, kb_dir)
    env = {
        "KB_DIR": str(kb_dir),
        "KB_RELOAD_INTERVAL_S": "0.1",
        "REDIS_URL": redis_server.extra["url"],
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": "sk-integration-secret",
        "LLM_MODEL": "fake",
        "LOG_FORMAT": "json",
    }
    proc = start_ai_api(tmp_path, env)
    try:
        url = proc.extra["url"]
        health = json.loads(get(url, "/health"))
        assert health["status"] == "ok" and health["redis"] == "up"
        assert health["llm"] == {"configured": True, "model": "fake"}

        assert post(url, text_message("令牌怎么轮换")) == {
            "reply": {"type": "text", "content": "这是大模型的回答。"}
        }
        llm.mode = "http_500"
        reply = post(url, text_message("令牌怎么轮换"), deadline_ms=3000)["reply"]
        assert reply["content"].startswith("【如何更换 Token（令牌轮换）】")

        # The knowledge base follows its folder without a restart.
        llm.mode = "http_500"
        (kb_dir / "新增.md").write_text("# 火星基地开放时间\n\n每天 9 点到 17 点。", "utf-8")
        wait_until(
            lambda: "火星基地" in post(url, text_message("火星基地开放时间"))["reply"]["content"],
            10,
            "the new passage to be answered",
        )

        metrics = get(url, "/metrics")
        assert 'ai_llm_errors_total{reason="http_error"}' in metrics
        assert 'ai_requests_total{msg_type="text",outcome="answered"}' in metrics
        assert "ai_redis_up 1.0" in metrics
    finally:
        proc.stop()
    log = proc.log()
    assert "sk-integration-secret" not in log
    assert "令牌怎么轮换" not in log  # no message content at INFO
    assert '"level": "INFO"' in log


def test_bad_configuration_stops_start_up_naming_the_variable(tmp_path):
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import celestial_nexus.api"],
        cwd=AI_API_DIR,
        env={"PATH": "/usr/bin:/bin", "LLM_TIMEOUT": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Config 'LLM_TIMEOUT' has value 'soon'" in result.stderr


def test_two_workers_aggregate_metrics_in_multiprocess_mode(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    proc = start_ai_api(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, workers=2)
    try:
        url = proc.extra["url"]
        for _ in range(6):
            post(url, text_message("帮助"))
        metrics = get(url, "/metrics")
    finally:
        proc.stop()
    assert 'ai_requests_total{msg_type="text",outcome="answered"} 6.0' in metrics
    assert "ai_kb_passages 3" in metrics  # the sample's 33 passages, max over workers
