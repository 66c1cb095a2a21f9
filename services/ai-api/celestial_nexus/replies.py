"""The fixed texts and menu replies of the AI API, read from REPLIES_FILE (TOML)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .chat_text import utf8_len
from .config import ConfigError
from .schemas import MAX_TEXT_BYTES, Article, ImageReply, NewsReply, Reply, TextReply

TEXT_KEYS = (
    "welcome",
    "help",
    "no_answer",
    "memory_cleared",
    "nothing_to_continue",
    "continue_hint",
    "voice_unrecognized",
    "image",
    "link",
    "video",
    "location",
    "unsupported",
)
# The texts filled in with str.format, each with the fields it may use and a sample value.
TEMPLATE_FIELDS: dict[str, dict[str, object]] = {
    "continue_hint": {"remaining": 999},
    "link": {"title": "链接标题"},
    "location": {"label": "地点"},
}


@dataclass(frozen=True)
class ReplyTexts:
    welcome: str
    help: str
    no_answer: str
    memory_cleared: str
    nothing_to_continue: str
    continue_hint: str
    voice_unrecognized: str
    image: str
    link: str
    video: str
    location: str
    unsupported: str
    scan_welcome: dict[str, str] = field(default_factory=dict)
    click: dict[str, Reply] = field(default_factory=dict)


def _click_reply(where: str, value: object) -> Reply:
    if isinstance(value, str):
        return TextReply(content=_text(where, value))
    if isinstance(value, dict) and "media_id" in value:
        return ImageReply(media_id=str(value["media_id"]))
    if isinstance(value, dict) and "title" in value:
        fields = {k: str(v) for k, v in value.items() if k in Article.model_fields}
        return NewsReply(articles=[Article(**fields)])
    raise ValueError(f"{where} must be a string, or a table with `title` or `media_id`")


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string")
    if utf8_len(value) > MAX_TEXT_BYTES:
        raise ValueError(f"{where} is over {MAX_TEXT_BYTES} bytes of UTF-8")
    return value.strip()


def _check_template(key: str, text: str) -> None:
    """Fill `text` in with sample values now: a placeholder it cannot fill would otherwise
    turn every message that uses it into a 500 (or, for continue_hint, a bare crash)."""
    fields = TEMPLATE_FIELDS[key]
    try:
        text.format(**fields)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
        allowed = ", ".join("{" + name + "}" for name in fields)
        raise ValueError(
            f"{key} has a placeholder that cannot be filled in ({type(exc).__name__}: {exc}); "
            f"it may use {allowed}, and '{{{{' or '}}}}' for a literal brace"
        ) from None


def load_replies(path: Path) -> ReplyTexts:
    """Read and check the replies file; a problem stops start-up naming REPLIES_FILE and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in TEXT_KEYS if key not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        texts = {key: _text(key, data[key]) for key in TEXT_KEYS}
        for key in TEMPLATE_FIELDS:
            _check_template(key, texts[key])
        scan = {
            str(k): _text(f"scan_welcome.{k}", v) for k, v in data.get("scan_welcome", {}).items()
        }
        click = {str(k): _click_reply(f"click.{k}", v) for k, v in data.get("click", {}).items()}
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"Config 'REPLIES_FILE' ({path}): {exc}") from None
    return ReplyTexts(**texts, scan_welcome=scan, click=click)
