"""The gateway's logs: one structured line per request, and no secret or content in them."""

from __future__ import annotations

import json

from tests.support.wechat import DEV_AES_KEY, DEV_TOKEN, sign, text_message
from wechat_gateway.logs import user_hash

SECRET_CONTENT = "我的银行卡密码是 314159"
OPENID = "oSecretUser42"


def log_lines(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


def test_request_lines_are_structured_and_hold_no_secrets(make_gateway, capsys):
    gateway = make_gateway(debug_endpoints=True, appsecret="AppSecretValue123")
    gateway.post(text_message(SECRET_CONTENT, openid=OPENID), mode="safe")
    gateway.post(text_message(SECRET_CONTENT, openid=OPENID), mode="plain")
    params, body = gateway.wechat.build_request(text_message(SECRET_CONTENT), mode="safe")
    params["msg_signature"] = sign("not-the-token", params["timestamp"], params["nonce"])
    gateway.client.post("/wechat", query_string=params, data=body)
    gateway.client.get("/_debug_signature?timestamp=1&nonce=2")
    captured = capsys.readouterr().err
    for secret in (DEV_TOKEN, DEV_AES_KEY, "AppSecretValue123", SECRET_CONTENT, OPENID):
        assert secret not in captured
    requests_logged = [line for line in log_lines(captured) if line.get("event") == "request"]
    safe, plain, forged = (line for line in requests_logged if line["route"] == "/wechat")
    assert safe["mode"] == "safe" and plain["mode"] == "plain"
    for line in (safe, plain):
        assert line["msg_type"] == "text" and line["outcome"] == "ok"
        assert line["user"] == user_hash(OPENID) and line["token_index"] == 0
        assert isinstance(line["latency_ms"], float) and line["method"] == "POST"
    assert safe["key_index"] == 0
    assert forged["outcome"] == "bad_signature" and forged["status"] == 403
    assert forged["mode"] == "safe"  # what its query claimed: encrypt_type=aes
    events = [line.get("event") for line in log_lines(captured)]
    assert "startup" in events and "signature_fail" in events


def test_an_unexpected_error_is_logged_with_its_stack_and_answered_success(make_gateway, capsys):
    gateway = make_gateway()  # built here so its log handler writes to the captured stderr

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    gateway.app.extensions["celestial_nexus"].delivery.answer = explode
    response = gateway.post(text_message("hi"))
    assert response.status_code == 200 and response.data == b"success"
    errors = [
        line for line in log_lines(capsys.readouterr().err) if line.get("event") == "exception"
    ]
    assert errors and "RuntimeError: boom" in errors[0]["exc"]


def test_the_request_line_writer_matches_the_formatters(capsys):
    """write_info (the per-request line) prints what logger.info with `extra` prints."""
    import logging
    from datetime import datetime, timedelta

    from wechat_gateway import logs

    logger = logging.getLogger("wechat_gateway.test")
    fields = {"event": "request", "status": 200, "user": "abc", "dedup_hit": True}
    for fmt in ("json", "text"):
        logs.configure("INFO", fmt)
        logs.write_info(logger, "request", fields)
        logger.info("request", extra=fields)
        written, logged = capsys.readouterr().err.splitlines()
        if fmt == "json":
            written_doc, logged_doc = json.loads(written), json.loads(logged)
            for doc in (written_doc, logged_doc):  # ISO 8601, UTC, milliseconds
                stamp = datetime.fromisoformat(doc.pop("ts"))
                assert stamp.utcoffset() == timedelta(0) and stamp.microsecond % 1000 == 0
            assert (
                written_doc
                == logged_doc
                == {
                    "level": "info",
                    "logger": "wechat_gateway.test",
                    "pid": logged_doc["pid"],
                    "msg": "request",
                    **fields,
                }
            )
        else:
            assert written.split(" ", 2)[2] == logged.split(" ", 2)[2]
            assert written.endswith(
                "INFO    wechat_gateway.test: request event=request "
                "status=200 user=abc dedup_hit=True"
            )


def test_lines_are_compact_json_as_the_runbook_greps_them(capsys):
    """The runbook greps for '"event":"signature_fail"': the format is an interface."""
    import logging

    from wechat_gateway import logs

    logs.configure("INFO", "json")
    logs.write_info(logging.getLogger("wechat_gateway"), "request", {"event": "request"})
    logging.getLogger("wechat_gateway.test").warning("x", extra={"event": "signature_fail"})
    written = capsys.readouterr().err
    assert '"event":"request"' in written and '"event":"signature_fail"' in written


def test_a_field_orjson_refuses_is_still_written_as_the_runbook_greps_it():
    """A lone surrogate, an int past 64 bits or a non-string key is no reason to lose a
    line, nor to write one the runbook's greps miss."""
    from wechat_gateway import logs

    document = {"event": "request", "error": "bad \udcff byte", "big": 2**64, 1: "key"}
    line = logs.json_line(document)
    assert line == json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    assert '"event":"request"' in line


def test_a_dataclass_in_a_field_is_written_as_its_repr_which_hides_secrets():
    """orjson would expand a dataclass field by field, tokens and AES keys included."""
    from tests.gateway.conftest import make_settings
    from wechat_gateway import logs

    account = make_settings(None).account
    line = logs.json_line({"account": account})
    assert json.loads(line)["account"] == repr(account)
    assert DEV_TOKEN not in line and "aes_keys=1" in line


class BrokenStream:
    def write(self, text):
        raise OSError("disk full")

    def flush(self):
        pass


def test_a_failing_log_stream_costs_no_reply(gateway, monkeypatch):
    """Writing the request line fails (disk full, closed pipe): the user still gets the answer."""
    import logging

    from wechat_gateway import logs

    monkeypatch.setattr(logs._handler, "stream", BrokenStream())
    monkeypatch.setattr(logging, "raiseExceptions", False)  # logging's own report, silenced
    logs.write_info(logging.getLogger("wechat_gateway"), "request", {})  # does not raise
    response = gateway.post(text_message("你好"))
    assert response.status_code == 200
    assert gateway.reply_of(response)["Content"] == "答：你好"


def test_every_route_logs_the_address_nginx_forwarded(make_gateway, capsys):
    """One proxy in front: the last X-Forwarded-For entry is the client, on every route."""
    gateway = make_gateway(debug_endpoints=True)
    forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}  # the client forged the first
    params = {
        "timestamp": "1",
        "nonce": "2",
        "echostr": "hi",
        "signature": sign(DEV_TOKEN, "1", "2"),
    }
    gateway.client.get("/wechat", query_string=params, headers=forwarded)
    gateway.client.get("/_debug_signature?timestamp=1&nonce=2", headers=forwarded)
    gateway.client.get("/wechat", query_string=params, headers={"X-Forwarded-For": " "})
    requests_logged = [
        line for line in log_lines(capsys.readouterr().err) if line.get("event") == "request"
    ]
    assert [(line["route"], line["client_ip"]) for line in requests_logged] == [
        ("/wechat", "203.0.113.9"),
        ("/_debug_signature", "203.0.113.9"),
        ("/wechat", "127.0.0.1"),  # an empty header: the socket's address
    ]


def test_configuring_the_gateways_logs_leaves_gunicorns_lines_whole():
    """Gunicorn's own lines in a worker print `%(process)d`: configure() must not unset it."""
    import logging
    import os

    from gunicorn.glogging import CONFIG_DEFAULTS

    from wechat_gateway import logs

    logs.configure("INFO", "json")
    gunicorn_format = logging.Formatter(CONFIG_DEFAULTS["formatters"]["generic"]["format"])
    record = logging.getLogger("gunicorn.error").makeRecord(
        "gunicorn.error", logging.INFO, __file__, 1, "Worker exiting (pid: %s)", (42,), None
    )
    assert gunicorn_format.format(record).endswith(
        f"[{os.getpid()}] [INFO] Worker exiting (pid: 42)"
    )
