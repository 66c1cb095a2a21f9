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
    assert run(gateway_url, "--mode", mode) == 1  # the port check fails: not 80/443 here
    out = capsys.readouterr().out
    assert "[FAIL] port" in out
    assert "[PASS] url_verification" in out
    assert "[PASS] message_status" in out and "[PASS] reply: text reply: '答：帮助'" in out


def test_checker_reports_a_wrong_token(gateway_url, capsys):
    code = checker.main([gateway_url, "--token", "wrongtoken"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] url_verification: HTTP 403" in out and "[FAIL] message_status: HTTP 403" in out


def test_checker_reports_no_listener(capsys):
    assert checker.main(["http://127.0.0.1:9/wechat", "--token", "abc"]) == 1
    assert "request failed" in capsys.readouterr().out
