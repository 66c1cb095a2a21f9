"""Parked answers longer than one bubble: the rest waits for the user's 继续, nothing else.

A parked answer goes out as the passive reply to the user's next message, whatever that
message says: the placeholder promised it. A text longer than one WeChat bubble parks its
first bubble, ending with the 继续 hint, and its rest as one `continuation` entry, which
only 继续 fetches, a bubble at a time. Any other message is a new question: it goes to the
AI and the continuation is dropped, as the AI API drops its own parts. Before, each bubble
of a long parked answer swallowed one of the user's next questions, which never reached
the AI.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from .splitting import MORE_HINT, PART_BYTES, split_utf8

CONTINUATION = "continuation"  # key of a parked entry that only 继续 fetches
_CONTINUE_WORDS = frozenset({"继续", "continue", "more"})  # the AI API's, "/" dropped
_NOT_A_WORD = re.compile(r"[\W_]+")  # spaces, brackets, quotes, punctuation, "/"
_HINT_BYTES = len(MORE_HINT.encode("utf-8"))


def asks_to_continue(message: dict[str, Any]) -> bool:
    """Whether a user message is 继续 as users type it: 「继续」, 继续？, /continue, ＭＯＲＥ."""
    if message.get("type") != "text":
        return False
    text = unicodedata.normalize("NFKC", message.get("content") or "")
    return _NOT_A_WORD.sub("", text).lower() in _CONTINUE_WORDS


def is_continuation(entry: dict[str, Any]) -> bool:
    return bool(entry.get(CONTINUATION))


def first_bubble(reply: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`reply` cut to one bubble, ending with the 继续 hint when a rest follows; the rest."""
    content = reply.get("content") or ""
    if reply.get("type") != "text" or len(content.encode("utf-8")) <= PART_BYTES:
        return reply, ""
    head = split_utf8(content, PART_BYTES - _HINT_BYTES)[0]
    return {**reply, "content": head + MORE_HINT}, content[len(head) :]


def continuation(entry: dict[str, Any], rest: str) -> dict[str, Any]:
    """The parked entry that holds `rest` of `entry`'s text for 继续."""
    return {**entry, "reply": {"type": "text", "content": rest}, CONTINUATION: True}
