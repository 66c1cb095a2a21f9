"""The /wechat WSGI endpoint: what Flask used to give the route for free, kept.

(The protocol behaviour of every status code is in test_views.py.)
"""

from __future__ import annotations

import io

import pytest

from tests.support.wechat import DEV_TOKEN, sign
from wechat_gateway.endpoint import query_params, request_id_of, status_line


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("signature=ab12&timestamp=1714036504", {"signature": "ab12", "timestamp": "1714036504"}),
        ("nonce=1&nonce=2", {"nonce": "1"}),  # the first value wins, as in Flask's args
        ("echostr=a%2Bb%3D&x=a+b", {"echostr": "a+b=", "x": "a b"}),
        ("openid=&&=orphan&flag", {"openid": "", "flag": ""}),
        ("msg%5Fsignature=1", {"msg_signature": "1"}),
    ],
)
def test_query_params(query, expected):
    assert query_params({"QUERY_STRING": query}) == expected


def test_request_id_comes_from_nginx_when_it_sent_one():
    nginx_id = "0f4c2a9e8b7d6c5b4a39281706f5e4d3"  # Nginx's $request_id: 32 hex digits
    assert request_id_of({"HTTP_X_REQUEST_ID": nginx_id}) == nginx_id
    for odd in ("a b", "x" * 65, "id\x01", "雪"):  # not a plain token: replaced by ours
        assert len(request_id_of({"HTTP_X_REQUEST_ID": odd})) == 16
    ours = {request_id_of({}) for _ in range(100)}
    assert len(ours) == 100 and all(len(rid) == 16 for rid in ours)


def test_head_is_a_bodyless_get(gateway):
    params = {"timestamp": "1", "nonce": "2", "echostr": "hello"}
    params["signature"] = sign(DEV_TOKEN, "1", "2")
    response = gateway.client.head("/wechat", query_string=params)
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == "5"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(gateway, method):
    response = gateway.client.open("/wechat", method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_other_paths_reach_the_flask_routes(gateway):
    assert gateway.client.get("/health").status_code == 200
    assert gateway.client.get("/wechat/extra").status_code == 404


def test_a_content_length_that_is_no_number_is_not_a_crash(gateway):
    """'²' passes str.isdigit() and fails int(): the body is read and judged as sent."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/wechat",
        "QUERY_STRING": "timestamp=1&nonce=2&signature=x",
        "CONTENT_LENGTH": "\u00b2",
        "wsgi.input": io.BytesIO(b"<xml></xml>"),
        "REMOTE_ADDR": "127.0.0.1",
    }
    statuses = []
    body = b"".join(gateway.app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["403 FORBIDDEN"] and body == b"403 stale_timestamp\n"


def test_a_body_of_unknown_length_over_the_limit_is_413(make_gateway):
    """A chunked upload declares no Content-Length: the limit holds on what is read."""
    gateway = make_gateway(max_body_bytes=1024)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/wechat",
        "QUERY_STRING": "timestamp=1&nonce=2&signature=x",
        "wsgi.input": io.BytesIO(b"<xml>" + b"a" * 2000 + b"</xml>"),
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "9090",
        "wsgi.url_scheme": "http",
    }
    statuses = []
    gateway.app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["413 REQUEST ENTITY TOO LARGE"]


def test_every_status_gets_a_reason_phrase():
    assert status_line(200) == "200 OK"
    assert status_line(413) == "413 REQUEST ENTITY TOO LARGE"
    assert status_line(429) == "429 TOO MANY REQUESTS"
