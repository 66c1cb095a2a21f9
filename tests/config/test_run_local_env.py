"""`make run`'s environment: the environment, then .env, then .env.example's development values."""

from __future__ import annotations

import pytest

from scripts import run_local

EXAMPLE = "WECHAT_TOKEN=devtoken\nAI_API_URL=http://127.0.0.1:8000\nAI_API_PORT=8000\n"


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout with .env.example; the test writes .env when it needs one."""
    (tmp_path / ".env.example").write_text(EXAMPLE, encoding="utf-8")
    monkeypatch.setattr(run_local, "ROOT", tmp_path)
    for name in ("WECHAT_TOKEN", "AI_API_URL", "AI_API_PORT", "HOST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_fresh_clone_runs_on_the_development_values_and_names_them(checkout):
    env, from_example = run_local.local_environment()
    assert env["WECHAT_TOKEN"] == "devtoken" and "WECHAT_TOKEN" in from_example
    assert env["AI_API_URL"] == "http://127.0.0.1:8000"


def test_the_environment_wins_over_env_files(checkout, monkeypatch):
    (checkout / ".env").write_text("WECHAT_TOKEN=mine\n", encoding="utf-8")
    assert run_local.local_environment()[0]["WECHAT_TOKEN"] == "mine"
    monkeypatch.setenv("WECHAT_TOKEN", "exported")
    env, from_example = run_local.local_environment()
    assert env["WECHAT_TOKEN"] == "exported" and "WECHAT_TOKEN" not in from_example


@pytest.mark.parametrize("dotenv", ["", EXAMPLE])  # no .env, or .env copied from .env.example
def test_the_gateway_follows_the_ai_api_port_of_this_run(checkout, monkeypatch, dotenv):
    (checkout / ".env").write_text(dotenv, encoding="utf-8")
    monkeypatch.setenv("AI_API_PORT", "18000")
    assert run_local.local_environment()[0]["AI_API_URL"] == "http://127.0.0.1:18000"


def test_an_ai_api_url_of_ones_own_is_kept(checkout, monkeypatch):
    (checkout / ".env").write_text("AI_API_URL=http://10.0.0.5:8000\n", encoding="utf-8")
    monkeypatch.setenv("AI_API_PORT", "18000")
    assert run_local.local_environment()[0]["AI_API_URL"] == "http://10.0.0.5:8000"
    monkeypatch.setenv("AI_API_URL", "http://127.0.0.1:8000")  # exported: taken as given
    assert run_local.local_environment()[0]["AI_API_URL"] == "http://127.0.0.1:8000"
