"""Parked answers longer than one bubble: the rest waits for the user's 继续, nothing else.

A parked answer goes out as the passive reply to the user's next message, whatever that
message says: the placeholder promised it. When it is shown, a text longer than one WeChat
bubble shows its first bubble, ending with the 继续 hint, and its rest goes to one slot per
user (the store's `keep_rest`), apart from the queue of promised answers. 继续 takes the
rest a bubble at a time; any other message drops it, as the AI API drops its own parts, and
takes the next promised answer or goes to the AI. Before, each bubble of a long parked
answer swallowed one of the user's next questions, which never reached the AI.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from .splitting import MORE_HINT, PART_BYTES, fits_one_bubble, split_utf8

CONTINUATION = "continuation"  # marks a rest: part of its answer reached the user already
_CONTINUE_WORDS = frozenset({"继续", "continue", "more"})  # the AI API's, "/" dropped
_NOT_A_WORD = re.compile(r"[\W_]+")  # spaces, brackets, quotes, punctuation, "/"
_HINT_BYTES = len(MORE_HINT.encode("utf-8"))
# 继续 or continue with brackets, spaces and punctuation around it is never longer: a longer
# message is a question, told apart without normalizing it (this runs on every callback).
_LONGEST_ASK = 16


def asks_to_continue(message: dict[str, Any]) -> bool:
    """Whether a user message is 继续 as users type or say it: 「继续」, 继续？, /continue,
    ＭＯＲＥ, or a voice message recognised as 继续。"""
    said = {"text": "content", "voice": "recognition"}.get(message.get("type") or "")
    text = (message.get(said) if said else None) or ""
    if not text or len(text) > _LONGEST_ASK:
        return False
    return _NOT_A_WORD.sub("", unicodedata.normalize("NFKC", text)).lower() in _CONTINUE_WORDS


def first_bubble(reply: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`reply` cut to one bubble, ending with the 继续 hint when a rest follows; the rest."""
    if fits_one_bubble(reply):
        return reply, ""
    content = reply["content"]
    head = split_utf8(content, PART_BYTES - _HINT_BYTES)[0]
    return {**reply, "content": head + MORE_HINT}, content[len(head) :]


def continuation(entry: dict[str, Any], rest: str) -> dict[str, Any]:
    """The entry that holds `rest` of `entry`'s text for 继续 (not the custom-mode `rest`
    field, which would store the text twice)."""
    kept = {k: v for k, v in entry.items() if k != "rest"}
    return {**kept, "reply": {"type": "text", "content": rest}, CONTINUATION: True}
