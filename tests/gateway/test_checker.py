"""wechat_gateway.checker against a real Gunicorn gateway, in each mode, and a wrong token."""

from __future__ import annotations

import pytest

from tests.support.processes import start_gateway
from tests.support.wechat import Account
from wechat_gateway import checker

ACCOUNT = Account()


@pytest.fixture
def gateway_url(tmp_path, fake_ai):
    gateway = start_gateway(tmp_path, {**ACCOUNT.env(), "AI_API_URL": fake_ai.url}, workers=1)
    yield gateway.extra["url"] + "/wechat"
    gateway.stop()


def run(url: str, *extra: str) -> int:
    return checker.main(
        [
            url,
            "--token",
            ACCOUNT.token,
            "--appid",
            ACCOUNT.appid,
            "--aes-key",
            ACCOUNT.encoding_aes_key,
            *extra,
        ]
    )


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
def test_checker_passes_a_healthy_gateway_in_every_mode(gateway_url, capsys, mode):
    assert run(gateway_url, "--mode", mode) == 0
    out = capsys.readouterr().out
    assert "[SKIP] port: 127.0.0.1" in out  # a local gateway (make run): WeChat's ports not checked
    assert "[PASS] url_verification" in out
    assert "[PASS] message_status" in out and "[PASS] reply: text reply: '答：帮助'" in out


@pytest.mark.parametrize(
    ("url", "verdict"),
    [
        ("https://wx.example.com/wechat", "[PASS] port"),
        ("http://wx.example.com/wechat", "[PASS] port"),
        ("https://wx.example.com:8443/wechat", "[FAIL] port"),
        ("https://localhost:8443/wechat", "[SKIP] port"),
        ("https://[::1]:8443/wechat", "[SKIP] port"),
    ],
)
def test_the_port_check_holds_public_urls_to_wechats_ports(url, verdict):
    (check,) = checker.check_url(url)
    assert f"[{check.verdict}] {check.name}" == verdict


def test_checker_fails_when_the_user_would_only_get_the_fallback_reply(
    gateway_url, fake_ai, capsys
):
    fake_ai.status = 500  # the AI API fails: the gateway answers WECHAT_FALLBACK_REPLY
    assert run(gateway_url) == 1
    out = capsys.readouterr().out
    assert "[PASS] message_status" in out
    assert "[FAIL] reply: WECHAT_FALLBACK_REPLY '抱歉，服务暂时繁忙，请稍后再试。'" in out


def test_checker_reports_a_wrong_token(gateway_url, capsys):
    code = checker.main([gateway_url, "--token", "wrongtoken"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] url_verification: HTTP 403" in out and "[FAIL] message_status: HTTP 403" in out


def test_checker_reports_no_listener(capsys):
    assert checker.main(["http://127.0.0.1:9/wechat", "--token", "abc"]) == 1
    assert "request failed" in capsys.readouterr().out
