"""wechat_gateway.checker against a real Gunicorn gateway, in each mode, and a wrong token."""

from __future__ import annotations

import http.server
import ssl
import threading
from urllib.parse import parse_qs, urlparse

import certifi
import pytest

from tests.support.processes import make_self_signed_cert, start_gateway
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


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """WeChat's URL check answered without checking the signature: the TLS is under test."""

    def do_GET(self) -> None:
        echostr = parse_qs(urlparse(self.path).query)["echostr"][0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(echostr)))
        self.end_headers()
        self.wfile.write(echostr)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def self_signed_https_url(tmp_path):
    cert = make_self_signed_cert(tmp_path / "certs")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, cert.parent / "privkey.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/wechat"
    server.shutdown()
    server.server_close()


def test_insecure_accepts_a_self_signed_certificate_despite_a_ca_bundle_in_the_env(
    self_signed_https_url, monkeypatch
):
    """requests swapped the session's verify=False for REQUESTS_CA_BUNDLE (psf/requests#3829),
    so `make check-endpoint … ARGS=--insecure` failed against `make stack` on such hosts."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    insecure = checker.check_verification(
        checker.http_session(insecure=True), self_signed_https_url, ACCOUNT.token
    )
    assert insecure.ok, insecure.detail
    strict = checker.check_verification(
        checker.http_session(insecure=False), self_signed_https_url, ACCOUNT.token
    )
    assert not strict.ok and "SSLError" in strict.detail
