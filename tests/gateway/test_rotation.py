"""Token and AES-key rotation: both generations are accepted, and each gets replies it can read."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.wechat import Account, WeChatSimulator, text_message
from wechat_gateway.app import create_app

OLD = Account(token="oldtoken1", encoding_aes_key="O" * 43)
NEW = Account(token="newtoken2", encoding_aes_key="N" * 43)


@pytest.fixture
def rotating_gateway(fake_ai):
    """Step 1 of the runbook: new values current, old ones still accepted."""
    from wechat_gateway.config import Settings

    settings = Settings.from_env(
        {
            "WECHAT_TOKEN": NEW.token,
            "WECHAT_ACCEPT_TOKENS": OLD.token,
            "WECHAT_ENCODING_AES_KEY": NEW.encoding_aes_key,
            "WECHAT_ACCEPT_AES_KEYS": OLD.encoding_aes_key,
            "WECHAT_APPID": NEW.appid,
            "AI_API_URL": fake_ai.url,
        }
    )
    return create_app(dataclasses.replace(settings, reply_budget_s=1.0)).test_client()


@pytest.mark.parametrize("account", [OLD, NEW], ids=["before-console-update", "after"])
def test_each_generation_is_accepted_and_can_read_its_reply(rotating_gateway, account):
    wechat = WeChatSimulator("http://unused/wechat", account)  # WeChat's side, via wechatpy
    params, body = wechat.build_request(text_message("轮换中"), mode="safe")
    response = rotating_gateway.post("/wechat", query_string=params, data=body)
    assert response.status_code == 200
    # Decrypts and verifies MsgSignature with the credentials WeChat is using right now.
    assert wechat.open_reply(response.data)["Content"] == "答：轮换中"


def test_retries_across_the_console_update_each_get_a_reply_they_can_read(rotating_gateway):
    """A retry may come with the other generation's token and key than the first attempt
    (the console was saved in between): the reply replayed to it must be sealed with them."""
    fields = text_message("轮换之间")
    for account in (OLD, NEW, OLD):
        wechat = WeChatSimulator("http://unused/wechat", account)
        params, body = wechat.build_request(fields, mode="safe")
        response = rotating_gateway.post("/wechat", query_string=params, data=body)
        assert wechat.open_reply(response.data)["Content"] == "答：轮换之间"


def test_a_third_token_is_refused(rotating_gateway):
    stranger = WeChatSimulator("http://unused/wechat", Account(token="strangertok"))
    params, body = stranger.build_request(text_message("x"), mode="plain")
    assert rotating_gateway.post("/wechat", query_string=params, data=body).status_code == 403
