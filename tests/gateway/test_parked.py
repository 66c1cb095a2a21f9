"""wechat_gateway.parked: what counts as 继续, and a long reply cut to one bubble."""

from __future__ import annotations

import pytest

from wechat_gateway.parked import asks_to_continue, continuation, first_bubble
from wechat_gateway.splitting import MORE_HINT, PART_BYTES


@pytest.mark.parametrize("text", ["继续", "「继续」", "继续？", " 继续。", "/continue", "ＭＯＲＥ"])
def test_continue_as_users_type_it(text):
    assert asks_to_continue({"type": "text", "content": text})


@pytest.mark.parametrize(
    "text", ["继续说说部署", "不继续", "", "帮助", "继续" + "，请详细解释一下部署的每个步骤"]
)
def test_other_text_is_a_new_question(text):
    assert not asks_to_continue({"type": "text", "content": text})


def test_a_voice_message_recognised_as_continue_asks_for_more():
    assert asks_to_continue({"type": "voice", "recognition": "继续。"})
    assert not asks_to_continue({"type": "voice", "recognition": None})
    assert not asks_to_continue({"type": "image", "content": "继续"})


def test_a_long_text_keeps_one_bubble_with_the_hint_and_returns_the_rest():
    text = "".join(f"第{i}句。" for i in range(600))
    bubble, rest = first_bubble({"type": "text", "content": text})
    assert bubble["content"].endswith(MORE_HINT)
    assert len(bubble["content"].encode()) <= PART_BYTES
    assert bubble["content"].removesuffix(MORE_HINT) + rest == text


def test_a_short_text_or_a_picture_stays_whole():
    short = {"type": "text", "content": "短"}
    image = {"type": "image", "media_id": "m"}
    assert first_bubble(short) == (short, "") and first_bubble(image) == (image, "")


def test_a_continuation_holds_the_rest_as_text_without_the_custom_mode_rest_field():
    """The custom-mode `rest` field holds the same text: kept, it would be stored twice."""
    entry = continuation({"source": "ai", "reply": {"type": "news"}, "rest": "余下"}, "余下")
    assert entry == {
        "source": "ai",
        "reply": {"type": "text", "content": "余下"},
        "continuation": True,
    }
