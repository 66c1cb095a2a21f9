"""The replies file: fixed texts, scene welcomes, menu replies, and its checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from celestial_nexus.config import DEFAULT_REPLIES_FILE, ConfigError
from celestial_nexus.replies import load_replies
from celestial_nexus.schemas import NewsReply, TextReply


def test_the_shipped_file_loads():
    texts = load_replies(DEFAULT_REPLIES_FILE)
    assert "帮助" in texts.welcome
    assert isinstance(texts.click["ABOUT"], TextReply)
    assert "{remaining}" in texts.continue_hint


def test_click_tables_and_errors(tmp_path: Path):
    base = DEFAULT_REPLIES_FILE.read_text(encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(base + '\n[click.NEWS]\ntitle = "T"\nurl = "https://e.com"\n', "utf-8")
    assert isinstance(load_replies(path).click["NEWS"], NewsReply)
    path.write_text(base + "\n[click.BAD]\nfoo = 1\n", "utf-8")
    with pytest.raises(ConfigError, match=r"click\.BAD"):
        load_replies(path)
    path.write_text(base.replace('no_answer = "', 'no_answer = "' + "长" * 700), "utf-8")
    with pytest.raises(ConfigError, match="no_answer is over 2000 bytes"):
        load_replies(path)
    path.write_text("not toml ===", "utf-8")
    with pytest.raises(ConfigError, match="REPLIES_FILE"):
        load_replies(path)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("「{title}」", "「{title}」{来自}", r"link has a placeholder .*'来自'.*\{title\}"),
        ("还剩 {remaining} 段", "还剩 {n} 段", r"continue_hint .*\{remaining\}"),
        ("「{label}」", "「{label}」{0}", r"location has a placeholder .*IndexError"),
        ("「{label}」", "「{label}」{", r"location has a placeholder .*ValueError"),
        ("还剩 {remaining} 段", "还剩 {remaining:s} 段", r"continue_hint"),
    ],
)
def test_a_placeholder_that_cannot_be_filled_stops_start_up(tmp_path: Path, old, new, error):
    path = tmp_path / "r.toml"
    text = DEFAULT_REPLIES_FILE.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), "utf-8")
    with pytest.raises(ConfigError, match=r"^Config 'REPLIES_FILE' \(.*\): " + error):
        load_replies(path)


def test_escaped_braces_and_braces_in_plain_texts_are_fine(tmp_path: Path):
    path = tmp_path / "r.toml"
    text = DEFAULT_REPLIES_FILE.read_text(encoding="utf-8")
    text = text.replace("「{title}」", "「{title}」{{原文}}")
    text = text.replace('unsupported = "', 'unsupported = "{不是模板} ')
    path.write_text(text, "utf-8")
    texts = load_replies(path)
    assert texts.link.format(title="T").startswith("收到你分享的链接「T」{原文}")
    assert texts.unsupported.startswith("{不是模板}")
