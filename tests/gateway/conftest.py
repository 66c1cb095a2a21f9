"""In-process gateway fixtures: an app built from Settings, a fake AI API on 127.0.0.1."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.wechat import Account, WeChatSimulator
from wechat_gateway.app import create_app
from wechat_gateway.config import Settings

ACCOUNT = Account()


def make_settings(ai_url: str | None, **overrides) -> Settings:
    """Settings for in-process tests: real defaults, short waits so tests stay fast."""
    base = Settings.from_env({**ACCOUNT.env(), "AI_API_URL": ai_url or "http://127.0.0.1:9"})
    fast = {"reply_budget_s": 1.0, "retry_hold_s": 1.2, "delivery_window_s": 3.0}
    return dataclasses.replace(base, **{**fast, **overrides})


class Gateway:
    """A Flask test client plus a simulator that builds (and opens) WeChat's requests."""

    def __init__(self, app, simulator: WeChatSimulator) -> None:
        self.app = app
        self.client = app.test_client()
        self.wechat = simulator

    def post(self, fields, *, mode="safe", **build):
        params, body = self.wechat.build_request(fields, mode=mode, **build)
        return self.client.post("/wechat", query_string=params, data=body)

    def reply_of(self, response) -> dict[str, str]:
        return self.wechat.open_reply(response.data)


@pytest.fixture
def make_gateway(fake_ai):
    def build(sender=None, **overrides) -> Gateway:
        settings = make_settings(fake_ai.url, **overrides)
        app = create_app(settings, sender=sender)
        return Gateway(app, WeChatSimulator("http://unused/wechat", ACCOUNT))

    return build


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()
