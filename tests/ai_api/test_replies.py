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
