"""The routes: every status code the gateway answers, with real requests against the app."""

import time

import pytest

from tests.gateway.test_messages import BILLION_LAUGHS, EXTERNAL_ENTITY
from tests.support.exposition import metric_sum
from tests.support.wechat import ACCOUNT_ID, event_message, sign, text_message


def test_url_verification(gateway):
    params = {"timestamp": "1714036504", "nonce": "1514711492", "echostr": "4375120948345356249"}
    params["signature"] = sign("celestial-dev-token", params["timestamp"], params["nonce"])
    response = gateway.client.get("/wechat", query_string=params)
    assert response.status_code == 200 and response.data == b"4375120948345356249"
    assert response.mimetype == "text/plain"


def test_url_verification_with_a_rotated_out_token(make_gateway):
    gateway = make_gateway()
    import dataclasses

    from wechat_gateway.config import AccountSettings

    settings = gateway.app.extensions["celestial_nexus"].settings
    rotated = dataclasses.replace(
        settings,
        account=AccountSettings(
            settings.account.appid, ("newtoken", "celestial-dev-token"), settings.account.aes_keys
        ),
    )
    gateway.app.extensions["celestial_nexus"].settings = rotated
    params = {"timestamp": "1", "nonce": "2", "echostr": "e"}
    params["signature"] = sign("celestial-dev-token", "1", "2")
    assert gateway.client.get("/wechat", query_string=params).status_code == 200
    params["signature"] = sign("unknown", "1", "2")
    assert gateway.client.get("/wechat", query_string=params).status_code == 403


@pytest.mark.parametrize("missing", ["signature", "timestamp", "nonce", "echostr"])
def test_url_verification_missing_parameter(gateway, missing):
    params = {"signature": "x", "timestamp": "1", "nonce": "2", "echostr": "e"}
    del params[missing]
    assert gateway.client.get("/wechat", query_string=params).status_code == 400


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
def test_text_message_in_every_mode(gateway, fake_ai, mode):
    response = gateway.post(text_message("你好"), mode=mode)
    assert response.status_code == 200
    reply = gateway.reply_of(response)
    assert reply["Content"] == "答：你好" and reply["MsgType"] == "text"
    assert reply["ToUserName"] == "oUser0001" and reply["FromUserName"] == ACCOUNT_ID
    encrypted = b"<Encrypt>" in response.data
    assert encrypted == (mode != "plain")
    assert fake_ai.received[-1]["content"] == "你好"


def test_deadline_header_reaches_the_ai_api(gateway, fake_ai):
    gateway.post(text_message("hi"))
    assert 2000 <= int(fake_ai.headers[-1]["X-Reply-Deadline-Ms"]) <= 3000


def test_no_answer_means_success(gateway, fake_ai):
    fake_ai.reply_for = lambda message: None
    response = gateway.post(event_message("LOCATION", Latitude="1", Longitude="2", Precision="3"))
    assert response.status_code == 200 and response.data == b"success"


def test_image_and_news_answers_are_rendered(gateway, fake_ai):
    fake_ai.reply_for = lambda m: {"type": "news", "articles": [{"title": "T", "url": "http://u"}]}
    reply = gateway.reply_of(gateway.post(text_message("news please")))
    assert reply["MsgType"] == "news" and reply["Articles.Title"] == "T"
    fake_ai.reply_for = lambda m: {"type": "image", "media_id": "MEDIA"}
    assert gateway.reply_of(gateway.post(text_message("image please")))["Image.MediaId"] == "MEDIA"


def test_hostile_reply_text_stays_valid_xml(gateway, fake_ai):
    evil = "a]]>b\x00c\x1bd<script>"
    fake_ai.reply_for = lambda m: {"type": "text", "content": evil}
    assert gateway.reply_of(gateway.post(text_message("x")))["Content"] == "a]]>bcd<script>"


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_bad_signature_is_403_and_counted(gateway, fake_ai, mode):
    fields = text_message("hi")
    params, body = gateway.wechat.build_request(fields, mode=mode)
    key = "msg_signature" if mode == "safe" else "signature"
    params[key] = sign("wrong-token", params["timestamp"], params["nonce"])
    labels = {"method": "POST", "mode": mode, "outcome": "bad_signature"}

    def counted() -> float:
        metrics = gateway.client.get("/metrics").data.decode()
        return metric_sum(metrics, "wechat_requests_total", **labels)

    before = counted()
    response = gateway.client.post("/wechat", query_string=params, data=body)
    assert response.status_code == 403
    assert fake_ai.received == []
    assert counted() == before + 1  # under the mode its query claimed


def test_safe_mode_checks_msg_signature_not_signature(gateway):
    """The classic bug: a valid `signature` must not let a forged Encrypt through."""
    params, _ = gateway.wechat.build_request(text_message("hi"), mode="safe")
    _, other_body = gateway.wechat.build_request(text_message("forged"), mode="safe")
    response = gateway.client.post("/wechat", query_string=params, data=other_body)
    assert response.status_code == 403


def test_stale_timestamp_is_403(gateway):
    old = str(int(time.time()) - 3600)
    assert gateway.post(text_message("hi"), timestamp=old).status_code == 403


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_hostile_xml_is_400_within_a_second(gateway, body):
    params, _ = gateway.wechat.build_request(text_message("x"), mode="plain")
    started = time.monotonic()
    response = gateway.client.post("/wechat", query_string=params, data=body)
    assert response.status_code == 400 and time.monotonic() - started < 1


def test_malformed_xml_is_400(gateway):
    params, _ = gateway.wechat.build_request(text_message("x"), mode="plain")
    assert gateway.client.post("/wechat", query_string=params, data=b"<xml><a>").status_code == 400


def test_oversized_body_is_413(gateway):
    params, _ = gateway.wechat.build_request(text_message("x"), mode="plain")
    big = b"<xml><Content>" + b"a" * (70 * 1024) + b"</Content></xml>"
    assert gateway.client.post("/wechat", query_string=params, data=big).status_code == 413


def test_missing_timestamp_is_400(gateway):
    params, body = gateway.wechat.build_request(text_message("x"), mode="plain")
    del params["timestamp"]
    assert gateway.client.post("/wechat", query_string=params, data=body).status_code == 400


def test_tampered_ciphertext_fails_closed(gateway, fake_ai):
    """A body that fails to decrypt is never read as plaintext, even in compat mode."""
    fields = text_message("hi")
    params, body = gateway.wechat.build_request(fields, mode="compat")
    start = body.index(b"<Encrypt><![CDATA[") + len(b"<Encrypt><![CDATA[")
    tampered = body[:start] + b"AAAA" + body[start + 4 :]
    encrypted = tampered[start : tampered.index(b"]]>", start)].decode()
    params["msg_signature"] = sign(
        "celestial-dev-token", params["timestamp"], params["nonce"], encrypted
    )
    response = gateway.client.post("/wechat", query_string=params, data=tampered)
    assert response.status_code == 400
    assert fake_ai.received == []


def test_a_body_with_encrypt_is_never_read_as_plaintext_without_encrypt_type(gateway, fake_ai):
    """A compat body whose query lost encrypt_type and msg_signature was answered from its
    plaintext fields, its ciphertext ignored."""
    params, body = gateway.wechat.build_request(text_message("hi"), mode="compat")
    del params["encrypt_type"], params["msg_signature"]
    response = gateway.client.post("/wechat", query_string=params, data=body)
    assert response.status_code == 400
    assert fake_ai.received == []


def test_message_for_another_appid_is_403(gateway, fake_ai):
    from wechatpy.crypto import PrpCrypto

    from tests.support.wechat import to_xml
    from wechat_gateway.crypto import decode_aes_key

    encrypted = (
        PrpCrypto(decode_aes_key(gateway.wechat.account.encoding_aes_key))
        .encrypt(to_xml(text_message("hi")), "wxOTHERAPP")
        .decode()
    )
    timestamp, nonce = str(int(time.time())), "123"
    params = {
        "timestamp": timestamp,
        "nonce": nonce,
        "encrypt_type": "aes",
        "signature": sign("celestial-dev-token", timestamp, nonce),
        "msg_signature": sign("celestial-dev-token", timestamp, nonce, encrypted),
    }
    body = to_xml({"ToUserName": ACCOUNT_ID, "Encrypt": encrypted}).encode()
    assert gateway.client.post("/wechat", query_string=params, data=body).status_code == 403
    assert fake_ai.received == []


def test_aes_callback_without_a_configured_key_is_400(make_gateway):
    gateway = make_gateway()
    import dataclasses

    services = gateway.app.extensions["celestial_nexus"]
    services.settings = dataclasses.replace(
        services.settings, account=dataclasses.replace(services.settings.account, aes_keys=())
    )
    assert gateway.post(text_message("x"), mode="safe").status_code == 400


def test_strict_off_lets_a_bad_signature_through(make_gateway, fake_ai):
    gateway = make_gateway(strict_verify=False)
    params, body = gateway.wechat.build_request(text_message("dev"), mode="plain")
    params["signature"] = "0" * 40
    response = gateway.client.post("/wechat", query_string=params, data=body)
    assert response.status_code == 200 and gateway.reply_of(response)["Content"] == "答：dev"


def test_ai_api_error_gives_the_fallback_reply(gateway, fake_ai):
    fake_ai.status = 500
    response = gateway.post(text_message("boom"))
    assert response.status_code == 200
    assert gateway.reply_of(response)["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"


def test_malformed_ai_answer_gives_the_fallback_reply(gateway, fake_ai):
    fake_ai.raw_body = b"<html>oops</html>"
    assert gateway.reply_of(gateway.post(text_message("x")))["Content"].startswith("抱歉")


def test_ai_api_down_gives_the_fallback_reply(make_gateway):
    gateway = make_gateway(ai_api_url="http://127.0.0.1:9")  # nothing listens on port 9
    response = gateway.post(text_message("anyone?"))
    assert response.status_code == 200
    assert gateway.reply_of(response)["Content"] == "抱歉，服务暂时繁忙，请稍后再试。"


def test_slow_ai_in_off_mode_gives_the_fallback_within_the_budget(make_gateway, fake_ai):
    gateway = make_gateway(slow_reply_mode="off", reply_budget_s=0.5)
    fake_ai.latency_s = 2
    started = time.monotonic()
    response = gateway.post(text_message("slow"))
    assert time.monotonic() - started < 1.5
    assert gateway.reply_of(response)["Content"].startswith("抱歉")


def test_retry_replays_the_same_reply_and_calls_the_ai_once(gateway, fake_ai):
    fields = text_message("once")
    first = gateway.reply_of(gateway.post(fields))
    second = gateway.reply_of(gateway.post(fields))
    assert first["Content"] == second["Content"] == "答：once"
    assert fake_ai.calls_for(f"msg:{fields['MsgId']}:oUser0001:{fields['CreateTime']}") == 1


def test_every_retry_gets_the_very_bytes_of_the_first_reply(gateway):
    """Store the rendered reply so every retry gets the identical reply (protocol notes,
    lesson 2): the same CreateTime, nonce and ciphertext, each retry newly signed by WeChat."""
    fields = text_message("identical")
    bodies = [gateway.post(fields).data for _ in range(3)]
    assert bodies[0] == bodies[1] == bodies[2]
    assert gateway.reply_of(gateway.post(fields))["Content"] == "答：identical"


def test_a_retry_in_another_mode_gets_a_reply_in_its_own_mode(gateway):
    fields = text_message("modes")
    safe = gateway.post(fields, mode="safe")
    plain = gateway.post(fields, mode="plain")
    assert gateway.reply_of(safe)["Content"] == gateway.reply_of(plain)["Content"] == "答：modes"
    assert b"<Encrypt>" in safe.data and b"<Encrypt>" not in plain.data


def test_health_reports_components(gateway):
    document = gateway.client.get("/health").get_json()
    assert document["status"] == "ok" and document["redis"] == "disabled"
    assert document["components"]["redis"] == "disabled"
    assert document["components"]["ai_api"] == "ok"


def test_health_degraded_when_ai_api_is_down(make_gateway):
    gateway = make_gateway(ai_api_url="http://127.0.0.1:9")
    response = gateway.client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "degraded"
    assert response.get_json()["components"]["ai_api"] == "down"


def test_metrics_content_type_is_prometheus_text_once(gateway):
    """Flask's `mimetype=` appended a second `charset`: Prometheus 3 refuses to parse a
    media type with a repeated parameter and fails the scrape."""
    from prometheus_client import CONTENT_TYPE_LATEST

    assert gateway.client.get("/metrics").headers["Content-Type"] == CONTENT_TYPE_LATEST


def test_metrics_exposes_the_gateway_metrics(gateway):
    gateway.post(text_message("m"))
    text = gateway.client.get("/metrics").data.decode()
    for name in (
        "wechat_requests_total",
        "wechat_request_latency_seconds_bucket",
        "wechat_ai_request_latency_seconds_bucket",
        "wechat_delivery_attempts_total",
    ):
        assert name in text


def test_debug_signature_is_404_by_default(gateway):
    assert gateway.client.get("/_debug_signature?timestamp=1&nonce=2").status_code == 404


def test_debug_signature_helps_without_revealing_the_token(make_gateway):
    gateway = make_gateway(debug_endpoints=True)
    expected = sign("celestial-dev-token", "1", "2")
    expected_msg = sign("celestial-dev-token", "1", "2", "CIPHERTEXT")
    response = gateway.client.get(
        f"/_debug_signature?timestamp=1&nonce=2&signature={expected}"
        f"&encrypt=CIPHERTEXT&msg_signature={expected_msg}"
    )
    document = response.get_json()
    assert response.status_code == 200
    assert document["expected"][0]["signature"] == expected
    assert document["expected"][0]["msg_signature"] == expected_msg
    assert document["matches_token_index"] == {"signature": 0, "msg_signature": 0}
    assert "celestial-dev-token" not in response.data.decode()
    wrong = gateway.client.get("/_debug_signature?timestamp=1&nonce=2&signature=" + "0" * 40)
    assert wrong.get_json()["matches_token_index"] == {"signature": None}


def test_debug_signature_takes_any_timestamp_without_failing(make_gateway):
    """'²' passes str.isdigit() and fails int(): the helper still answers, without a skew."""
    gateway = make_gateway(debug_endpoints=True)
    for timestamp in ("%C2%B2", "abc", "-5"):
        response = gateway.client.get(f"/_debug_signature?timestamp={timestamp}&nonce=2")
        assert response.status_code == 200
        assert response.get_json()["clock_skew_s"] is None


def test_unknown_route_is_404(gateway):
    assert gateway.client.get("/nope").status_code == 404


def test_known_series_exist_before_any_event(gateway):
    text = gateway.client.get("/metrics").data.decode()
    for series in (
        'wechat_signature_fail_total{reason="bad_msg_signature"}',
        'wechat_replies_total{path="placeholder"}',
        'wechat_decrypt_fail_total{reason="appid"}',
        'wechat_custom_send_total{result="not_retryable"}',
    ):
        assert f"\n{series} " in text, series
