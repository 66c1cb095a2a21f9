"""Shaping text for a WeChat chat bubble: Markdown to plain text, and splitting long answers.

WeChat shows Markdown raw and cuts a text reply at about 2048 bytes of UTF-8
(community-measured, see shared/notes/wechat-protocol.md 1.7), so answers are turned into
plain text and split into parts of at most 2000 bytes on paragraph or sentence boundaries.
"""

from __future__ import annotations

import re
import unicodedata

from .schemas import MAX_TEXT_BYTES

_FENCE = re.compile(r"^\s*(```|~~~).*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?:\[( |x|X)\]\s+)?")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
# A link target may hold balanced parentheses (…/wiki/Python_(programming_language)).
_TARGET = r"((?:[^()\s]|\([^()\s]*\))+)"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(" + _TARGET + r"(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(" + _TARGET + r"(?:\s+\"[^\"]*\")?\)")
# A bare URL ends at a space or at Chinese punctuation, which users put right after it.
_URL = re.compile(r"https?://[^\s<>\"'，。！？、；：“”‘’（）《》【】「」]+")
_KEPT = re.compile(r"\x00(\d+)\x00")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
# Stars touching a letter or a Chinese character (2*3*4, 长*宽*高) are arithmetic, not
# emphasis: 这是*重点* keeps its stars rather than risk turning a formula into 长宽高.
_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_CODE = re.compile(r"`([^`\n]+)`")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HTML_TAG = re.compile(r"</?(?:br|p|b|i|strong|em|code|span|div)\b[^>]*>", re.IGNORECASE)
_BLANKS = re.compile(r"\n{3,}")


def markdown_to_plain(text: str) -> str:
    """Turn Markdown (as LLMs write it) into text that reads well in a chat bubble.

    Headings become 【title】 lines, bullets become '• ', links keep their URL, emphasis
    and code marks are dropped; code blocks keep their lines. Plain text passes unchanged.
    """
    out: list[str] = []
    in_fence = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            out.append(line)
            continue
        if _RULE.match(line) or _TABLE_SEP.match(line):
            continue
        heading = _HEADING.match(line)
        if heading:
            out.append(f"【{_inline(heading.group(1))}】")
            continue
        line = _QUOTE.sub("", line)
        bullet = _BULLET.match(line)
        if bullet:
            line = f"{bullet.group(1)}• {line[bullet.end() :]}"
        if line.strip().startswith("|") and line.strip().endswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            line = "  ".join(c for c in cells if c)
        out.append(_inline(line).rstrip())
    return _BLANKS.sub("\n\n", "\n".join(out)).strip()


def _inline(line: str) -> str:
    """Emphasis and HTML marks dropped; code spans and URLs kept exactly as written, so
    `__init__.py` and https://example.com/a__b__c survive the emphasis rules."""
    kept: list[str] = []

    def keep(text: str) -> str:
        kept.append(text)
        return f"\x00{len(kept) - 1}\x00"

    line = _CODE.sub(lambda m: keep(m.group(1)), line.replace("\x00", ""))
    line = _IMAGE.sub(lambda m: f"{m.group(1) or '图片'} {keep(m.group(2))}", line)
    line = _LINK.sub(
        lambda m: (
            keep(m.group(2)) if m.group(1) == m.group(2) else f"{m.group(1)}（{keep(m.group(2))}）"
        ),
        line,
    )
    line = _URL.sub(lambda m: keep(m.group(0)), line)
    line = _BOLD.sub(r"\2", line)
    line = _STRIKE.sub(r"\1", line)
    line = _ITALIC.sub(r"\1", line)
    line = _HTML_TAG.sub("", line)
    return _KEPT.sub(lambda m: kept[int(m.group(1))], line)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# Break points, best first: a paragraph, a line, a sentence end, a clause, a space.
_BREAKS = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"[。！？!?…]+[”’」』）)\"']*[ \t]*|[.;；][ \t]+"),
    re.compile(r"[，、,：:；;]"),
    re.compile(r"\s+"),
)


def split_text(text: str, max_bytes: int = MAX_TEXT_BYTES) -> list[str]:
    """Split `text` into parts of at most `max_bytes` bytes of UTF-8.

    Parts are exact slices: ''.join(parts) == text. Each cut falls after the best break
    found in the second half of the window (paragraph, line, sentence, clause, space), and
    at worst on a character boundary, never inside a multi-byte character.
    """
    if max_bytes < 4:
        raise ValueError("max_bytes must hold at least one character (4 bytes)")
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = _fit(text, start, max_bytes)
        if end < len(text):
            end = _best_break(text, start, end)
        parts.append(text[start:end])
        start = end
    return parts


def _fit(text: str, start: int, max_bytes: int) -> int:
    """The largest end such that text[start:end] fits in max_bytes."""
    budget = max_bytes
    end = start
    # A UTF-8 character is at most 4 bytes, so budget // 4 characters always fit: take
    # such chunks while the budget allows, then finish character by character.
    while end < len(text) and budget >= 4:
        piece = text[end : end + budget // 4]
        budget -= utf8_len(piece)
        end += len(piece)
    while end < len(text):
        size = utf8_len(text[end])
        if size > budget:
            break
        budget -= size
        end += 1
    return end


def _best_break(text: str, start: int, end: int) -> int:
    """The end of the best break in the second half of text[start:end]; a '?', ':' or ','
    inside a URL is not one (a link cut in two works in neither part)."""
    window = text[start:end]
    floor = len(window) // 2
    urls = [(m.start(), m.end()) for m in _URL.finditer(window)]
    for pattern in _BREAKS:
        cut = None
        for match in pattern.finditer(window):
            inside_url = any(a < match.start() < b for a, b in urls)
            if match.end() > floor and not inside_url:
                cut = match.end()
        if cut:
            return start + cut
    # No break in sight: cut between characters, but not inside an emoji sequence or before
    # a combining mark (👍🏽, 👨‍👩‍👧, é written as e + ◌́ stay whole when they can).
    cut = end
    while cut - start > floor and _joins(text[cut - 1], text[cut]):
        cut -= 1
    return cut if cut - start > floor else end


def _joins(before: str, after: str) -> bool:
    """True when `after` belongs to the same visible character as `before`."""
    return (
        before == "\u200d"
        or after in "\u200d\ufe0e\ufe0f"
        or "\U0001f3fb" <= after <= "\U0001f3ff"  # skin tones
        or unicodedata.combining(after) != 0
        or ("\U0001f1e6" <= before <= "\U0001f1ff" and "\U0001f1e6" <= after <= "\U0001f1ff")
    )
