"""Cutting long text into parts of at most N bytes of UTF-8, at natural boundaries."""

from __future__ import annotations

# One WeChat text bubble: a passive reply or a customer-service message shows about 2048
# bytes; 2000 leaves room. A part that is not the last ends with MORE_HINT where the user
# must ask for the next one.
PART_BYTES = 2000
MORE_HINT = "…（内容较长，回复“继续”查看后续）"


def fits_one_bubble(reply: dict) -> bool:
    """Whether a reply document goes out as one bubble: not text, or at most PART_BYTES."""
    content = reply.get("content") or ""
    return reply.get("type") != "text" or len(content.encode("utf-8")) <= PART_BYTES


# Preferred cut points, best first: paragraph, line, sentence end, clause, space.
_BOUNDARIES = ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "，", ", ", " ")


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Parts of `text`, each at most max_bytes of UTF-8, that join back to `text` exactly."""
    parts: list[str] = []
    rest = text
    while len(rest.encode("utf-8")) > max_bytes:
        head = rest.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        cut = _best_cut(head)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest or not parts:
        parts.append(rest)
    return parts


def _best_cut(head: str) -> int:
    """The index after the last good boundary in the second half of `head`, else len(head)."""
    for boundary in _BOUNDARIES:
        index = head.rfind(boundary)
        if index >= len(head) // 2:
            return index + len(boundary)
    return len(head)
