"""Passive reply XML, `success`, and the encrypted reply envelope.

Reply text comes from an LLM and will contain what XML cannot carry: `]]>` inside a CDATA
section is split, and characters XML 1.0 forbids are dropped.
https://developers.weixin.qq.com/doc/service/en/Message_Management/Passive_user_reply_message.html
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SUCCESS = b"success"
# WeChat shows about 2048 bytes of a text reply; the AI API already splits at 2000.
MAX_TEXT_BYTES = 2047
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


# The field that carries each reply type's body: without it there is nothing to render.
REPLY_BODY = {"text": "content", "image": "media_id", "news": "articles"}


def has_body(reply: Mapping[str, Any] | None) -> bool:
    """Whether `reply` renders as a passive reply (render_reply), rather than `success`."""
    return bool(reply and reply.get(REPLY_BODY.get(str(reply.get("type")), "")))


def xml_safe(text: str) -> str:
    """Drop characters XML 1.0 forbids (control characters, lone surrogates, U+FFFE/FFFF)."""
    return _XML_ILLEGAL.sub("", text)


def cdata(text: str) -> str:
    """A CDATA section holding `text` exactly, `]]>` split across two sections."""
    return "<![CDATA[" + xml_safe(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def truncate_utf8(text: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """`text` cut to at most max_bytes of UTF-8, never inside a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _header(to_user: str, from_user: str, create_time: int, msg_type: str) -> str:
    return (
        f"<ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{int(create_time)}</CreateTime><MsgType>{cdata(msg_type)}</MsgType>"
    )


def render_text(to_user: str, from_user: str, create_time: int, content: str) -> str:
    body = cdata(truncate_utf8(content))
    return f"<xml>{_header(to_user, from_user, create_time, 'text')}<Content>{body}</Content></xml>"


def render_reply(
    reply: Mapping[str, Any], to_user: str, from_user: str, create_time: int
) -> str | None:
    """XML for an AI API reply document (text, image, news), or None when it cannot be sent."""
    kind = reply.get("type")
    if kind == "text" and reply.get("content"):
        return render_text(to_user, from_user, create_time, str(reply["content"]))
    header = _header(to_user, from_user, create_time, str(kind))
    if kind == "image" and reply.get("media_id"):
        return (
            f"<xml>{header}<Image><MediaId>{cdata(str(reply['media_id']))}</MediaId></Image></xml>"
        )
    if kind == "news" and reply.get("articles"):
        article = reply["articles"][0]  # one article per reply since 2018 (errcode 45008)
        item = "".join(
            f"<{tag}>{cdata(str(article.get(key) or ''))}</{tag}>"
            for tag, key in (
                ("Title", "title"),
                ("Description", "description"),
                ("PicUrl", "pic_url"),
                ("Url", "url"),
            )
        )
        articles = f"<ArticleCount>1</ArticleCount><Articles><item>{item}</item></Articles>"
        return f"<xml>{header}{articles}</xml>"
    return None


def render_encrypted_envelope(
    encrypted: str, msg_signature: str, timestamp: str, nonce: str
) -> str:
    """The envelope an encrypted request's reply travels in.

    Base64, hex and digits only, all of our making: nothing to escape.
    """
    return (
        f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
        f"<MsgSignature><![CDATA[{msg_signature}]]></MsgSignature>"
        f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
    )
