"""`X-Reply-Parts: all`: the whole answer at once, for the gateway's customer-service push."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from celestial_nexus.answerer import MAX_ANSWER_PARTS
from celestial_nexus.chat_text import utf8_len
from tests.ai_api.conftest import reply_text, text_message


def test_whole_answer_is_not_split_nor_parked(make_client, base_settings, kb_copy: Path):
    paragraph = "客服消息可以分多条发送，所以这里要整段回答。" * 12
    (kb_copy / "长文.md").write_text(
        "# 超长说明文档\n\n" + "\n\n".join(f"第{i}段：{paragraph}" for i in range(8)),
        encoding="utf-8",
    )
    client = make_client(replace(base_settings, kb_dir=kb_copy))
    whole = reply_text(
        client.post(
            "/v1/reply", json=text_message("超长说明文档"), headers={"X-Reply-Parts": "all"}
        )
    )
    assert utf8_len(whole) > 4000 and "（内容较长" not in whole
    assert whole.count("第0段") == 1 and whole.count("第7段") == 1
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))
    first = reply_text(client.post("/v1/reply", json=text_message("超长说明文档")))
    assert utf8_len(first) <= 2000 and "继续" in first  # without the header: parts as usual


def test_a_whole_answer_replaces_parts_parked_before(make_client, base_settings, kb_copy: Path):
    (kb_copy / "长文.md").write_text("# 超长说明文档\n\n" + "很长的句子。" * 2000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_copy))
    assert "继续" in reply_text(client.post("/v1/reply", json=text_message("超长说明文档")))
    whole = client.post(
        "/v1/reply", json=text_message("令牌怎么轮换"), headers={"X-Reply-Parts": "all"}
    )
    assert reply_text(whole).startswith("【如何更换 Token（令牌轮换）】")
    assert "没有更多" in reply_text(client.post("/v1/reply", json=text_message("继续")))


def test_parts_are_stored_before_the_reply_even_inside_the_deadline_margin(
    make_client, base_settings, kb_copy: Path, capfd
):
    (kb_copy / "长文.md").write_text("# 超长说明文档\n\n" + "很长的句子。" * 2000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_copy, deadline_margin_ms=150))
    late = {"X-Reply-Deadline-Ms": "100"}  # already inside the margin when it arrives
    first = reply_text(client.post("/v1/reply", json=text_message("超长说明文档"), headers=late))
    assert "继续" in first
    assert "outlasts the reply deadline" not in capfd.readouterr().err  # stored in time
    assert "很长的句子" in reply_text(client.post("/v1/reply", json=text_message("继续")))


def test_a_whole_answer_is_bounded_like_parts(make_client, base_settings, tmp_path: Path):
    """A huge passage would be about 150 customer-service messages to one user."""
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "manual.txt").write_text("超长手册\n" + "长句子。" * 25_000, encoding="utf-8")
    client = make_client(replace(base_settings, kb_dir=kb_dir))
    whole = reply_text(
        client.post("/v1/reply", json=text_message("超长手册"), headers={"X-Reply-Parts": "all"})
    )
    assert 18 * 2000 < utf8_len(whole) <= MAX_ANSWER_PARTS * 2000 + MAX_ANSWER_PARTS
