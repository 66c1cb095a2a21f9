"""The process stack end to end: real redis-server, Gunicorn, Uvicorn and nginx TLS on loopback.

Everything goes through https://127.0.0.1:<port>/wechat the way WeChat reaches a deployment,
with the nginx server blocks of infra/nginx (scripts/run_stack.py swaps only ports, paths and
the gateway address).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.run_stack import Stack, start_stack
from tests.support.processes import gateway_request_lines, make_self_signed_cert, wait_until
from tests.support.tls import verified_session
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration

CLIENT_ADDR = "127.0.0.2"  # loopback, but not the address nginx uses towards the gateway


def simulator(stack: Stack, account: Account, cert: Path, source: str | None = None):
    """The WeChat simulator over a session that verifies our certificate."""
    session = verified_session(str(cert), source)
    sim = WeChatSimulator(stack.wechat_url, account, mode="safe", session=session)
    session.verify = str(cert)  # the simulator turns verification off; turn it back on
    return sim


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_self_signed_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def client(cert: Path) -> requests.Session:
    """Plain HTTP(S) requests that verify our certificate and ignore proxy settings."""
    return verified_session(str(cert))


@pytest.fixture(scope="module")
def account() -> Account:
    return Account(
        token=secrets.token_hex(12),
        appid="wx" + secrets.token_hex(8),
        encoding_aes_key=(secrets.token_hex(22))[:43],
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, cert: Path, account: Account
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    env = {
        **account.env(),
        "STRICT_WECHAT_VERIFY": "1",
        # On at the gateway, so a 404 through nginx proves nginx, not the gateway, refuses it.
        "WECHAT_DEBUG_ENDPOINTS": "1",
    }
    running = start_stack(workdir, env, cert_dir=cert.parent)
    yield running
    running.stop()


def gateway_lines(stack: Stack) -> list[dict]:
    return gateway_request_lines(stack.processes["gateway"].log())


def test_safe_mode_callback_is_answered_through_tls(
    stack: Stack, account: Account, cert: Path
) -> None:
    sim = simulator(stack, account, cert)
    attempt = sim.post(text_message("你好", openid="oStackUser1"))
    assert attempt.verdict == "reply", (attempt.status, attempt.body[:300])
    assert attempt.reply is not None
    assert attempt.reply["ToUserName"] == "oStackUser1"
    assert attempt.reply["MsgType"] == "text" and attempt.reply["Content"].strip()
    assert attempt.elapsed_s < 5


def test_url_verification_passes_through(stack: Stack, account: Account, cert: Path) -> None:
    response = simulator(stack, account, cert).verify_url(echostr="1234567890")
    assert response.status_code == 200 and response.text == "1234567890"


def test_the_certificate_verifies_and_tls_is_1_2_or_newer(stack: Stack, cert: Path) -> None:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # TLS 1.1 offered alone must fail (OpenSSL may refuse it on our side too: either way no
    # session is established). Python flags the old version constants as deprecated.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=5)
    with pytest.raises((ssl.SSLError, OSError)), old.wrap_socket(raw, server_hostname="127.0.0.1"):
        pass
    raw.close()


def test_hsts_is_sent(client: requests.Session, stack: Stack) -> None:
    response = client.get(stack.wechat_url, timeout=5)
    assert "max-age=" in response.headers.get("Strict-Transport-Security", "")


def test_http_is_redirected_with_301(client: requests.Session, stack: Stack) -> None:
    response = client.get(
        f"http://127.0.0.1:{stack.http_port}/wechat?signature=x&nonce=1",
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 301
    assert response.headers["Location"] == "https://127.0.0.1/wechat?signature=x&nonce=1"


def test_acme_challenge_is_served_over_http(client: requests.Session, stack: Stack) -> None:
    challenge = stack.nginx_dir / "acme" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "tok3n").write_text("tok3n.thumbprint")
    response = client.get(
        f"http://127.0.0.1:{stack.http_port}/.well-known/acme-challenge/tok3n",
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 200 and response.text == "tok3n.thumbprint"


@pytest.mark.parametrize("path", ["/health", "/metrics", "/_debug_signature"])
def test_internal_paths_are_refused_by_nginx(
    client: requests.Session, stack: Stack, path: str
) -> None:
    direct = client.get(f"{stack.processes['gateway'].extra['url']}{path}", timeout=5)
    assert direct.status_code != 404, f"the gateway itself should serve {path}"
    response = client.get(f"https://127.0.0.1:{stack.https_port}{path}", timeout=5)
    assert response.status_code in (403, 404)
    assert "wechat" not in response.text.lower()


def test_oversized_body_is_refused_at_the_door(client: requests.Session, stack: Stack) -> None:
    response = client.post(stack.wechat_url, data=b"x" * (65 * 1024), timeout=5)
    assert response.status_code == 413


def test_gateway_sees_the_real_client_address(stack: Stack, account: Account, cert: Path) -> None:
    sim = simulator(stack, account, cert, source=CLIENT_ADDR)
    sim.session.headers["X-Forwarded-For"] = "203.0.113.9"  # forged: nginx must overwrite it
    before = len(gateway_lines(stack))
    attempt = sim.post(text_message("where am I", openid="oStackUser2"))
    assert attempt.verdict == "reply", (attempt.status, attempt.body[:300])
    wait_until(lambda: len(gateway_lines(stack)) > before, 5, "the gateway's request line")
    new = gateway_lines(stack)[before:]
    assert [line["client_ip"] for line in new] == [CLIENT_ADDR], new


def test_nginx_and_gateway_lines_share_the_request_id(
    stack: Stack, account: Account, cert: Path
) -> None:
    """Nginx's $request_id reaches the gateway: an operator joins the two log lines on it."""
    sim = simulator(stack, account, cert)
    before = len(gateway_lines(stack))
    attempt = sim.post(text_message("trace me", openid="oStackUser3"))
    assert attempt.verdict == "reply", (attempt.status, attempt.body[:300])
    wait_until(lambda: len(gateway_lines(stack)) > before, 5, "the gateway's request line")
    (line,) = gateway_lines(stack)[before:]
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"]), line
    access_log = stack.nginx_dir / "access.log"
    wait_until(lambda: line["request_id"] in access_log.read_text(), 5, "nginx's access line")
    (access,) = [
        json.loads(raw) for raw in access_log.read_text().splitlines() if line["request_id"] in raw
    ]
    assert access["uri"] == "/wechat" and access["status"] == 200


def test_stub_status_answers_on_the_internal_port(client: requests.Session, stack: Stack) -> None:
    response = client.get(f"http://127.0.0.1:{stack.status_port}/stub_status", timeout=5)
    assert response.status_code == 200 and "Active connections" in response.text
