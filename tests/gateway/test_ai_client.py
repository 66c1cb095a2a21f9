"""The AI API client over both transports: what the gateway sends, and how failures surface.

The gevent worker uses geventhttpclient; threaded processes (these tests' Flask client,
tools) use urllib3. Both must send the same request and map failures to the same
AIError reasons, which label wechat_ai_errors_total and decide the fallback reply.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.support.fake_ai import FakeAI
from tests.support.processes import GATEWAY_DIR, free_port, make_self_signed_cert
from wechat_gateway.ai_client import (
    AIClient,
    AIError,
    GeventTransport,
    Urllib3Transport,
    transport_for,
)

TRANSPORTS = {"gevent": GeventTransport, "urllib3": Urllib3Transport}


@pytest.fixture(params=sorted(TRANSPORTS))
def client_for(request):
    clients: list[AIClient] = []

    def build(base_url: str) -> AIClient:
        clients.append(AIClient(base_url, TRANSPORTS[request.param](base_url.rstrip("/"), 8)))
        return clients[-1]

    yield build
    for client in clients:
        client.close()


MESSAGE = {"dedup_key": "k1", "type": "text", "content": "你好", "openid": "oUser"}


def test_reply_sends_the_message_and_its_deadline(fake_ai, client_for):
    client = client_for(fake_ai.url)
    reply = client.reply(MESSAGE, 2.5, "req-1", whole=True)
    assert reply == {"type": "text", "content": "答：你好"}
    assert fake_ai.received[-1] == MESSAGE
    headers = {k.lower(): v for k, v in fake_ai.headers[-1].items()}
    assert headers["x-reply-deadline-ms"] == "2500"
    assert headers["x-request-id"] == "req-1"
    assert headers["x-reply-parts"] == "all"
    assert headers["content-type"] == "application/json"


def test_connections_are_reused(fake_ai, client_for):
    client = client_for(fake_ai.url)
    for _ in range(5):
        client.reply(MESSAGE, 1.0)
    assert fake_ai.connections_opened == 1


def test_a_base_url_with_a_path_prefix(fake_ai, client_for):
    client = client_for(fake_ai.url + "/prefix/")
    client.reply(MESSAGE, 1.0)
    assert fake_ai.paths[-1] == "/prefix/v1/reply"


def test_no_answer_is_none(fake_ai, client_for):
    fake_ai.reply_for = lambda message: None
    assert client_for(fake_ai.url).reply(MESSAGE, 1.0) is None


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"reply": {"type": "text", "content": "x"}}', "http_status"),
        (200, b"not json", "bad_response"),
        (200, b'{"answer": 1}', "bad_response"),
        (200, b'{"reply": {"type": "video"}}', "bad_response"),
        # The contract (docs/message-schema.md) broken inside a known type:
        (200, b'{"reply": {"type": "text"}}', "bad_response"),
        (200, b'{"reply": {"type": "text", "content": ["x"]}}', "bad_response"),
        (200, b'{"reply": {"type": "text", "content": 123}}', "bad_response"),
        (200, b'{"reply": {"type": "image", "media_id": null}}', "bad_response"),
        (200, b'{"reply": {"type": "news", "articles": "abc"}}', "bad_response"),
        (200, b'{"reply": {"type": "news", "articles": []}}', "bad_response"),
        (200, b'{"reply": {"type": "news", "articles": ["x"]}}', "bad_response"),
        (200, b'{"reply": {"type": "news", "articles": [{"url": "https://e.x"}]}}', "bad_response"),
        (
            200,
            b'{"reply": {"type": "news", "articles": [{"title": "t", "url": 1}]}}',
            "bad_response",
        ),
    ],
)
def test_bad_answers_are_ai_errors(fake_ai, client_for, status, body, reason):
    fake_ai.status, fake_ai.raw_body = status, body
    with pytest.raises(AIError) as caught:
        client_for(fake_ai.url).reply(MESSAGE, 1.0)
    assert caught.value.reason == reason


def test_a_number_orjson_cannot_write_still_reaches_the_ai(fake_ai, client_for):
    """An integer past 64 bits (a plain-mode body's Scale is not signed by WeChat) is JSON."""
    message = {**MESSAGE, "type": "location", "scale": 2**64}
    assert client_for(fake_ai.url).reply(message, 1.0) is not None
    assert fake_ai.received[-1]["scale"] == 2**64


def test_reply_texts_lose_what_xml_cannot_carry(fake_ai, client_for):
    """A lone surrogate (valid in JSON, not in UTF-8 or XML) or a control character is
    dropped here, before splitting, rendering or a customer-service push meet it."""
    fake_ai.raw_body = b'{"reply": {"type": "text", "content": "a\\ud800b\\u0001c", "x": 1}}'
    assert client_for(fake_ai.url).reply(MESSAGE, 1.0) == {"type": "text", "content": "abc", "x": 1}
    fake_ai.raw_body = (
        b'{"reply": {"type": "news", "articles": [{"title": "t\\udfff", "url": null}]}}'
    )
    assert client_for(fake_ai.url).reply(MESSAGE, 1.0) == {
        "type": "news",
        "articles": [{"title": "t"}],
    }


def test_a_slow_ai_api_is_a_timeout(fake_ai, client_for):
    fake_ai.latency_s = 3.0
    with pytest.raises(AIError) as caught:
        client_for(fake_ai.url).reply(MESSAGE, 0.1)
    assert caught.value.reason == "timeout"


def test_nothing_listening_is_a_connection_error(client_for):
    with pytest.raises(AIError) as caught:
        client_for(f"http://127.0.0.1:{free_port()}").reply(MESSAGE, 1.0)
    assert caught.value.reason == "connection"


def test_a_connection_never_accepted_is_a_connection_error_not_a_slow_answer(client_for):
    """A full accept queue (an overloaded AI API): the connect times out after 1 s. It was
    counted as a timeout, logged as "no answer within <the whole window>"."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = []
    for _ in range(8):  # fill the accept queue: nothing is ever accepted
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(listener.getsockname())
        queued.append(sock)
    try:
        started = time.monotonic()
        with pytest.raises(AIError) as caught:
            client_for(f"http://127.0.0.1:{listener.getsockname()[1]}").reply(MESSAGE, 10.0)
        assert caught.value.reason == "connection"
        assert time.monotonic() - started < 5  # the connect timeout, not the 10 s window
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_an_untrusted_certificate_is_refused(tmp_path, client_for):
    """HTTPS to the AI API verifies its certificate: a self-signed one is a connection error."""
    cert = make_self_signed_cert(tmp_path)
    ai = FakeAI().use_tls(cert, tmp_path / "privkey.pem").start()
    try:
        with pytest.raises(AIError) as caught:
            client_for(ai.url).reply(MESSAGE, 1.0)
        assert caught.value.reason == "connection" and ai.received == []
    finally:
        ai.stop()


def test_a_header_with_a_line_break_is_never_sent():
    transport = GeventTransport("http://127.0.0.1:1", 1)
    with pytest.raises(ValueError, match="line break"):
        transport.post("/v1/reply", b"{}", {"X-Request-Id": "a\r\nX-Evil: 1"}, 1.0)


def test_health(fake_ai, client_for):
    assert client_for(fake_ai.url).healthy()
    assert not client_for(f"http://127.0.0.1:{free_port()}").healthy()


def test_urllib3_outside_gevent():
    """This test process is not monkey-patched: the gevent pool must not be picked here."""
    assert isinstance(transport_for("http://127.0.0.1:1"), Urllib3Transport)


def test_geventhttpclient_in_a_gevent_worker():
    """What Gunicorn's gevent worker does before loading the app, in a process of its own."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from wechat_gateway.ai_client import transport_for\n"
        "print(type(transport_for('http://127.0.0.1:1')).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=GATEWAY_DIR, check=True
    )
    assert done.stdout.strip() == "GeventTransport"
