"""POST /v1/reply, /health and /metrics through FastAPI's TestClient, built from Settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis
from prometheus_client import CONTENT_TYPE_LATEST

from celestial_nexus.chat_text import utf8_len
from celestial_nexus.config import Settings
from tests.ai_api.conftest import event_message, message, metric, reply_text, text_message

METRIC_NAMES = (
    "ai_requests_total",
    "ai_answer_latency_seconds",
    "ai_llm_errors_total",
    "ai_llm_fallbacks_total",
    "ai_kb_passages",
    "ai_kb_reloads_total",
)


def test_health_reports_kb_llm_and_redis(make_client, base_settings):
    client = make_client(base_settings)
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["kb"]["loaded"] is True
    assert body["kb"]["passages"] >= 30
    assert body["llm"] == {"configured": False, "model": None}
    assert body["redis"] == "disabled"


def test_llm_panels_read_zero_before_any_llm_failure(make_client, base_settings):
    """No LLM configured and no question asked: the LLM error and fallback series exist (at
    0 in a fresh process), so the dashboard's panels show 0 instead of no data."""
    text = make_client(base_settings).get("/metrics").text
    for reason in ("timeout", "http_error", "malformed", "refusal", "connection"):
        assert f'ai_llm_errors_total{{reason="{reason}"}} ' in text
        assert f'ai_llm_fallbacks_total{{reason="{reason}"}} ' in text
    assert 'ai_llm_fallbacks_total{reason="deadline"} ' in text


def test_metrics_exposes_the_agreed_names(make_client, base_settings):
    client = make_client(base_settings)
    client.post("/v1/reply", json=text_message("帮助"))
    text = client.get("/metrics").text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "ai_redis_up" not in text  # only exported when REDIS_URL is set
    assert client.get("/metrics").headers["content-type"] == CONTENT_TYPE_LATEST
    assert metric(client, "ai_kb_passages") >= 30


def test_kb_answer_has_title_and_plain_text(make_client, base_settings):
    client = make_client(base_settings)
    before = metric(client, "ai_requests_total", msg_type="text", outcome="answered")
    content = reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert content.startswith("【如何更换 Token（令牌轮换）】\n")
    assert "`" not in content and "##" not in content
    assert metric(client, "ai_requests_total", msg_type="text", outcome="answered") == before + 1
    assert metric(client, "ai_answer_latency_seconds_count", answerer="kb") >= 1


def test_unrelated_question_gets_no_answer_and_suggests_help(make_client, base_settings):
    client = make_client(base_settings)
    before = metric(client, "ai_requests_total", msg_type="text", outcome="no_answer")
    content = reply_text(client.post("/v1/reply", json=text_message("红烧肉怎么做")))
    assert "帮助" in content and "回答不了" in content
    assert metric(client, "ai_requests_total", msg_type="text", outcome="no_answer") == before + 1


def test_commands_in_chinese_and_english(make_client, base_settings):
    client = make_client(base_settings)
    help_zh = reply_text(client.post("/v1/reply", json=text_message("帮助")))
    assert reply_text(client.post("/v1/reply", json=text_message(" HELP "))) == help_zh
    assert "清除记忆" in help_zh and "继续" in help_zh
    for word in ("清除记忆", "/reset"):
        assert "重新开始" in reply_text(client.post("/v1/reply", json=text_message(word)))
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))
    assert metric(client, "ai_answer_latency_seconds_count", answerer="command") >= 4


@pytest.mark.parametrize("typed", ["「继续」", "继续？", "【继续】", "ＨＥＬＰ", "“帮助”"])
def test_commands_as_users_type_them(make_client, base_settings, kb_copy: Path, typed):
    """The hint says 回复「继续」: typed with the brackets, full-width or with a question
    mark, it is still the command, and the waiting parts are not lost to a search."""
    (kb_copy / "长文.md").write_text("# 超长说明文档\n\n" + "很长的句子。" * 2000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_copy))
    assert "回复「继续」" in reply_text(client.post("/v1/reply", json=text_message("超长说明文档")))
    got = reply_text(client.post("/v1/reply", json=text_message(typed)))
    assert ("很长的句子" if "继续" in typed else "常用指令") in got, got[:40]


def test_full_width_latin_finds_the_passage(make_client, base_settings):
    """A Chinese IME in full-width mode types ＴＯＫＥＮ: the same word as token."""
    client = make_client(base_settings)
    half = reply_text(client.post("/v1/reply", json=text_message("token验证失败")))
    assert reply_text(client.post("/v1/reply", json=text_message("ＴＯＫＥＮ验证失败"))) == half


def test_voice_with_recognition_is_answered_as_text(make_client, base_settings):
    client = make_client(base_settings)
    before = metric(client, "ai_requests_total", msg_type="voice", outcome="answered")
    msg = message("voice", media_id="m1", format="amr", recognition="令牌怎么轮换")
    assert "令牌轮换" in reply_text(client.post("/v1/reply", json=msg))
    assert metric(client, "ai_requests_total", msg_type="voice", outcome="answered") == before + 1


def test_voice_without_recognition_asks_to_type(make_client, base_settings):
    client = make_client(base_settings)
    for recognition in (None, "  "):
        msg = message("voice", media_id="m1", format="amr", recognition=recognition)
        assert "文字" in reply_text(client.post("/v1/reply", json=msg))


def test_image_link_video_location_are_acknowledged(make_client, base_settings):
    client = make_client(base_settings)
    other = metric(client, "ai_requests_total", msg_type="other", outcome="answered")
    image = message("image", pic_url="http://x/p.jpg", media_id="m")
    assert "图片" in reply_text(client.post("/v1/reply", json=image))
    link = message("link", title="公众号运营指南", description="d", url="https://example.com/a")
    assert "「公众号运营指南」" in reply_text(client.post("/v1/reply", json=link))
    video = message("shortvideo", media_id="m", thumb_media_id="t")
    assert "视频" in reply_text(client.post("/v1/reply", json=video))
    location = message("location", location_x=23.1, location_y=113.3, scale=20, label="广州塔")
    assert "广州塔" in reply_text(client.post("/v1/reply", json=location))
    odd = message("miniprogrampage")
    assert "文字" in reply_text(client.post("/v1/reply", json=odd))
    assert metric(client, "ai_requests_total", msg_type="other", outcome="answered") == other + 1
    assert metric(client, "ai_answer_latency_seconds_count", answerer="static") >= 5


def test_subscribe_and_scan_get_the_welcome(make_client, base_settings, tmp_path: Path):
    replies = tmp_path / "replies.toml"
    text = base_settings.replies_file.read_text(encoding="utf-8").replace(
        '# promo = "欢迎通过活动二维码关注！"', 'promo = "活动欢迎语"'
    )
    replies.write_text(text, encoding="utf-8")
    client = make_client(replace(base_settings, replies_file=replies))
    welcome = reply_text(client.post("/v1/reply", json=event_message("subscribe")))
    assert "欢迎关注" in welcome
    by_qr = event_message("subscribe", "qrscene_promo")
    assert reply_text(client.post("/v1/reply", json=by_qr)) == "活动欢迎语"
    assert reply_text(client.post("/v1/reply", json=event_message("SCAN", "promo"))) == "活动欢迎语"
    assert reply_text(client.post("/v1/reply", json=event_message("SCAN", "other"))) == welcome
    assert client.post("/v1/reply", json=event_message("SCAN", "")).json() == {"reply": None}


def test_click_keys_map_to_configured_replies(make_client, base_settings, tmp_path: Path):
    replies = tmp_path / "replies.toml"
    replies.write_text(
        base_settings.replies_file.read_text(encoding="utf-8")
        + '\n[click.DOCS]\ntitle = "使用文档"\nurl = "https://example.com/docs"\n'
        + '\n[click.LOGO]\nmedia_id = "MEDIA123"\n',
        encoding="utf-8",
    )
    client = make_client(replace(base_settings, replies_file=replies))
    no_reply = metric(client, "ai_requests_total", msg_type="event", outcome="no_reply")
    about = reply_text(client.post("/v1/reply", json=event_message("CLICK", "ABOUT")))
    assert "Celestial Nexus" in about
    news = client.post("/v1/reply", json=event_message("CLICK", "DOCS")).json()["reply"]
    assert news == {
        "type": "news",
        "articles": [
            {
                "title": "使用文档",
                "description": "",
                "pic_url": "",
                "url": "https://example.com/docs",
            }
        ],
    }
    image = client.post("/v1/reply", json=event_message("CLICK", "LOGO")).json()["reply"]
    assert image == {"type": "image", "media_id": "MEDIA123"}
    unknown = client.post("/v1/reply", json=event_message("CLICK", "NOPE"))
    assert unknown.json() == {"reply": None}
    assert metric(client, "ai_requests_total", msg_type="event", outcome="no_reply") == no_reply + 1


def test_unknown_location_and_view_events_get_nothing(make_client, base_settings):
    client = make_client(base_settings)
    for event, key in (
        ("LOCATION", None),
        ("VIEW", "https://example.com"),
        ("weird", None),
        ("TEMPLATESENDJOBFINISH", None),
    ):
        response = client.post("/v1/reply", json=event_message(event, key))
        assert response.status_code == 200
        assert response.json() == {"reply": None}


def test_unsubscribe_erases_memory_and_parked_parts(make_client, llm_settings, fake_llm):
    fake_llm.answer = lambda messages: "很长的回答。" * 400
    client = make_client(llm_settings)
    reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert client.post("/v1/reply", json=event_message("unsubscribe")).json() == {"reply": None}
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))
    fake_llm.answer = lambda messages: "好的。"
    reply_text(client.post("/v1/reply", json=text_message("再问一次")))
    roles = [m["role"] for m in fake_llm.requests[-1]["messages"]]
    assert roles == ["system", "user"]  # nothing remembered from before the unsubscribe


def test_long_answer_split_with_continue(make_client, base_settings, kb_copy: Path):
    paragraph = "WeChat 的文字回复有长度上限，所以长回答要分段发送。" * 12
    (kb_copy / "长文.md").write_text(
        "# 超长说明文档\n\n" + "\n\n".join(f"第{i}段：{paragraph}" for i in range(8)),
        encoding="utf-8",
    )
    client = make_client(replace(base_settings, kb_dir=kb_copy))
    first = reply_text(client.post("/v1/reply", json=text_message("超长说明文档")))
    parts = [first]
    while "继续" in parts[-1]:
        parts.append(reply_text(client.post("/v1/reply", json=text_message("继续"))))
        assert len(parts) < 20
    assert len(parts) >= 3
    for part in parts:
        assert utf8_len(part) <= 2000
    bodies = [p.split("\n\n（内容较长")[0] for p in parts]
    joined = "".join(bodies).replace("\n", "")
    assert joined.count("第7段") == 1 and joined.count("第0段") == 1
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))


def test_a_new_question_replaces_parked_parts(make_client, base_settings, kb_copy: Path):
    (kb_copy / "长文.md").write_text("# 超长说明文档\n\n" + "很长的句子。" * 2000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_copy))
    assert "继续" in reply_text(client.post("/v1/reply", json=text_message("超长说明文档")))
    reply_text(client.post("/v1/reply", json=text_message("令牌怎么轮换")))
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))


def test_invalid_bodies_get_422_with_a_clear_message(make_client, base_settings):
    client = make_client(base_settings)
    bad = [
        {},
        {**text_message("hi"), "schema_version": 2},
        {k: v for k, v in text_message("hi").items() if k != "openid"},
        {**text_message("hi"), "content": 42},
        {**text_message("hi"), "openid": ""},
        {**text_message("hi"), "create_time": "yesterday"},
    ]
    for body in bad:
        response = client.post("/v1/reply", json=body)
        assert response.status_code == 422, body
        detail = response.json()
        assert "message-schema" in detail["message"]
        assert detail["detail"] and detail["detail"][0]["msg"]
    not_json = client.post(
        "/v1/reply", content=b"<xml/>", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert metric(client, "ai_requests_total", msg_type="invalid", outcome="invalid") >= 7


def test_text_without_content_gets_help_and_event_without_name_nothing(make_client, base_settings):
    client = make_client(base_settings)
    no_content = {k: v for k, v in text_message("x").items() if k != "content"}
    assert "继续" in reply_text(client.post("/v1/reply", json=no_content))
    no_event = {k: v for k, v in event_message("CLICK").items() if k != "event"}
    assert client.post("/v1/reply", json=no_event).json() == {"reply": None}


def test_unknown_fields_are_ignored(make_client, base_settings):
    client = make_client(base_settings)
    body = {**text_message("帮助"), "future_field": {"x": 1}}
    assert "继续" in reply_text(client.post("/v1/reply", json=body))


def test_openapi_documents_the_contract(make_client, base_settings):
    client = make_client(base_settings)
    schema = client.get("/openapi.json").json()
    assert "/v1/reply" in schema["paths"]
    assert "NormalizedMessage" in schema["components"]["schemas"]
    assert "ReplyEnvelope" in schema["components"]["schemas"]


def test_kb_changes_take_effect_without_restart(make_client, base_settings, kb_copy: Path):
    from tests.support.processes import wait_until

    client = make_client(replace(base_settings, kb_dir=kb_copy))
    question = text_message("火星基地的开放时间")
    assert "回答不了" in reply_text(client.post("/v1/reply", json=question))
    reloads = metric(client, "ai_kb_reloads_total", result="ok")
    (kb_copy / "火星.md").write_text(
        "# 火星基地的开放时间\n\n每天 9 点到 17 点开放。", encoding="utf-8"
    )
    wait_until(
        lambda: metric(client, "ai_kb_reloads_total", result="ok") > reloads,
        10,
        "the knowledge base to reload",
    )
    assert "9 点到 17 点" in reply_text(client.post("/v1/reply", json=question))
    assert client.get("/health").json()["kb"]["passages"] == metric(client, "ai_kb_passages")


def test_logs_carry_no_secret_and_no_content_at_info(make_client, llm_settings, capfd):
    client = make_client(replace(llm_settings, log_level="INFO", log_format="json"))
    reply_text(client.post("/v1/reply", json=text_message("我的秘密问题是令牌轮换")))
    client.post("/v1/reply", json={})
    err = capfd.readouterr().err
    assert "answered text" in err
    assert llm_settings.llm_api_key not in err
    assert "秘密问题" not in err


def test_settings_repr_hides_the_api_key(llm_settings: Settings):
    assert llm_settings.llm_api_key not in repr(llm_settings)


@pytest.mark.parametrize("erase", [event_message("unsubscribe"), text_message("清除记忆")])
def test_an_erasure_while_redis_is_down_is_replayed_when_it_returns(
    make_client, llm_settings, fake_llm, redis_proxy, redis_server, erase
):
    client = make_client(replace(llm_settings, redis_url=redis_proxy.url))
    fake_llm.answer = lambda messages: "记住了：你的暗号是蓝色海豚。"
    reply_text(client.post("/v1/reply", json=text_message("我的暗号是蓝色海豚")))
    with redis.Redis(port=redis_server.port) as in_redis:
        assert in_redis.exists("cn:ai:mem:oUser1") == 1
        redis_proxy.cut()
        assert client.post("/v1/reply", json=erase).status_code == 200  # Redis still has it
        redis_proxy.restore()
        assert client.get("/health").json()["redis"] == "up"
        assert in_redis.exists("cn:ai:mem:oUser1") == 0
    fake_llm.answer = lambda messages: "好的。"
    reply_text(client.post("/v1/reply", json=text_message("你好")))
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user"]


def test_a_long_text_is_answered_and_searched_by_its_beginning(
    make_client, base_settings, monkeypatch
):
    client = make_client(base_settings)
    kb = client.app.state.kb.current
    searched: list[str] = []
    search = kb.search
    monkeypatch.setattr(kb, "search", lambda query, k=3: searched.append(query) or search(query, k))
    long_text = "令牌怎么轮换" + "请" * 30000  # unpunctuated: one block for jieba's HMM
    for body in (text_message(long_text), message("voice", recognition=long_text)):
        assert reply_text(client.post("/v1/reply", json=body)).startswith("【如何更换 Token")
    assert len(searched) == 2 and all(len(query) <= 500 for query in searched)
    too_long = {**message("link", url="https://x.example/"), "title": "长" * 20001}
    assert client.post("/v1/reply", json=too_long).status_code == 422  # other fields: bounded


def test_a_huge_answer_goes_out_in_a_bounded_number_of_parts(
    make_client, base_settings, tmp_path: Path
):
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "manual.txt").write_text("超长手册\n" + "x" * 100_000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_dir))
    parts = [reply_text(client.post("/v1/reply", json=text_message("超长手册")))]
    assert "还剩 19 段" in parts[0]
    while "继续" in parts[-1]:
        parts.append(reply_text(client.post("/v1/reply", json=text_message("继续"))))
        assert len(parts) <= 20
    assert len(parts) == 20 and all(utf8_len(part) <= 2000 for part in parts)
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))
