"""wechat_gateway.replies: XML a WeChat client can always read, whatever the LLM wrote."""

import xml.etree.ElementTree as ET

import pytest

from wechat_gateway.replies import (
    cdata,
    has_body,
    render_reply,
    render_text,
    truncate_utf8,
    xml_safe,
)


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


@pytest.mark.parametrize("text", ["a]]>b", "]]>", "x]]>]]>y", "<tag>&amp;", "多字节]]>文本"])
def test_cdata_keeps_text_exactly(text):
    root = parse(f"<xml><C>{cdata(text)}</C></xml>")
    assert root.find("C").text == text


def test_xml_illegal_characters_are_dropped():
    dirty = "ok\x00\x01\x08\x0b\x0c\x1f\ufffe\ufffftab\tnl\ncr\r"
    assert xml_safe(dirty) == "oktab\tnl\ncr\r"
    root = parse(render_text("oU", "gh", 1, dirty))
    assert root.find("Content").text.startswith("oktab")


def test_text_reply_fields():
    root = parse(render_text("oUser", "gh_acc", 1700000000, "你好"))
    assert [c.tag for c in root] == [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Content",
    ]
    assert (root.find("ToUserName").text, root.find("FromUserName").text) == ("oUser", "gh_acc")
    assert root.find("MsgType").text == "text" and root.find("Content").text == "你好"


def test_truncation_never_splits_a_character():
    text = "汉" * 1000  # 3000 bytes
    cut = truncate_utf8(text, 2047)
    assert len(cut.encode()) <= 2047 and cut == "汉" * 682
    assert truncate_utf8("short") == "short"


def test_image_and_news_replies():
    image = parse(render_reply({"type": "image", "media_id": "MID"}, "oU", "gh", 1))
    assert image.find("Image/MediaId").text == "MID"
    news = parse(
        render_reply(
            {
                "type": "news",
                "articles": [
                    {"title": "T", "description": "D", "pic_url": "P", "url": "U"},
                    {"title": "2nd"},
                ],
            },
            "oU",
            "gh",
            1,
        )
    )
    assert news.find("ArticleCount").text == "1"
    assert [
        news.find(f"Articles/item/{t}").text for t in ("Title", "Description", "PicUrl", "Url")
    ] == ["T", "D", "P", "U"]


@pytest.mark.parametrize(
    "reply",
    [
        {"type": "text", "content": ""},
        {"type": "image"},
        {"type": "news", "articles": []},
        {"type": "video"},
    ],
)
def test_unrenderable_replies_give_none(reply):
    assert render_reply(reply, "oU", "gh", 1) is None


@pytest.mark.parametrize(
    "reply",
    [
        {"type": "text", "content": "答"},
        {"type": "text", "content": ""},
        {"type": "text"},
        {"type": "image", "media_id": "m1"},
        {"type": "image", "media_id": ""},
        {"type": "news", "articles": [{"title": "t"}]},
        {"type": "news", "articles": []},
        {"type": "video", "media_id": "m1"},
    ],
)
def test_has_body_is_what_render_reply_can_render(reply):
    """The late path parks only what a passive reply can show (else the user gets `success`)."""
    assert has_body(reply) == (render_reply(reply, "oU", "gh_1", 1700000000) is not None)
