"""Passages by heading, tokenization of Chinese/English/numbers, ranking, synonyms, reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celestial_nexus.kb import (
    KnowledgeBase,
    KnowledgeFileError,
    LiveKnowledgeBase,
    Passage,
    features,
    load_passages,
    load_synonyms,
    split_markdown,
    split_text_file,
    tokenize,
)


def test_markdown_is_split_by_heading_with_section():
    text = "前言文字\n\n# 大标题\n\n## 第一节\n内容一\n\n```\n# 不是标题\n```\n\n### 小节\n内容二\n"
    passages = split_markdown(text, "guide.md")
    assert [(p.title, p.section) for p in passages] == [
        ("guide", ""),
        ("第一节", "大标题"),
        ("小节", "第一节"),
    ]
    assert "# 不是标题" in passages[1].body  # headings inside code blocks stay text
    assert passages[2].body == "内容二"


def test_front_matter_is_metadata_and_titles_lose_their_markdown():
    text = (
        "---\ntitle: 会员说明\nauthor: 张三 zhangsan@corp.example\n---\n\n"
        "会员每月可以免费提问一百次。\n\n# **会员** 如何`续费`\n\n在菜单里点击续费。\n\n---\n\n附注"
    )
    passages = split_markdown(text, "07-会员.md")
    assert [p.title for p in passages] == ["07-会员", "会员 如何续费"]
    assert "zhangsan@" not in passages[0].body and "title:" not in passages[0].body
    assert passages[1].body.endswith("---\n\n附注")  # a later rule is text, not metadata


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path):
    (tmp_path / "a.md").write_text("# 甲\n内容一", encoding="utf-8")
    (tmp_path / "08-价格.md").write_bytes("# 价格\n\n基础版每月九十九元。".encode("gbk"))
    with pytest.raises(KnowledgeFileError, match=r"08-价格\.md is not UTF-8"):
        load_passages(tmp_path)


def test_text_file_is_one_passage_titled_by_its_first_line():
    assert split_text_file("营业时间\n每天 9 点开门。", "hours.txt") == [
        Passage(title="营业时间", body="每天 9 点开门。", source="hours.txt")
    ]
    assert split_text_file("只有一行", "one.txt")[0].title == "one"
    assert split_text_file("  \n", "empty.txt") == []


def test_tokenize_handles_chinese_english_and_numbers():
    tokens = tokenize("Token验证失败怎么办？端口80和443，EncodingAESKey 43位")
    for expected in ("token", "验证", "失败", "端口", "80", "443", "encodingaeskey", "43"):
        assert expected in tokens
    assert "怎么办" not in tokens  # stopword
    assert "？" not in tokens
    assert tokenize("1. 第一步 2. 第二步") == tokenize("第一步 第二步")  # list numbers dropped


def test_features_add_chinese_characters():
    got = features("泄漏")
    assert "泄漏" in got and "¹泄" in got and "¹漏" in got


def test_synonyms_map_words_to_one_form(tmp_path: Path):
    path = tmp_path / "_synonyms.txt"
    path.write_text("# 注释\n泄露 泄漏, 外泄\n小程序\n", encoding="utf-8")
    synonyms = load_synonyms(path)
    assert synonyms == {"泄露": "泄露", "泄漏": "泄露", "外泄": "泄露"}
    assert "小程序" in tokenize("小程序怎么发布")  # kept whole once listed
    assert tokenize("密钥泄漏了", synonyms) == tokenize("密钥泄露了", synonyms)


def _kb(*passages: tuple[str, str]) -> KnowledgeBase:
    return KnowledgeBase([Passage(title=t, body=b, source="t.md") for t, b in passages])


def test_search_ranks_the_matching_passage_first():
    kb = _kb(
        ("营业时间", "我们每天 9 点到 18 点营业，节假日照常。"),
        ("退货政策", "收到商品 7 天内可以无理由退货，运费由买家承担。"),
        ("Wi-Fi 密码", "店内 Wi-Fi 名称 CoffeeShop，密码 12345678。"),
    )
    assert kb.search("几点开门营业")[0].passage.title == "营业时间"
    assert kb.search("买的东西不想要了能退吗")[0].passage.title == "退货政策"
    assert kb.search("wifi密码多少")[0].passage.title == "Wi-Fi 密码"
    top = kb.search("退货的运费谁承担")[0]
    assert top.passage.title == "退货政策" and top.confidence > 0.5
    assert kb.search("火星上有水吗") == [] or kb.search("火星上有水吗")[0].confidence < 0.25


def test_empty_kb_and_empty_query():
    assert KnowledgeBase([]).search("任何问题") == []
    assert _kb(("a", "b")).search("？？的了吗") == []


def test_chat_text_has_title_and_plain_body():
    passage = Passage(title="标题", body="**重点**：运行 `make run`", source="a.md")
    assert passage.chat_text() == "【标题】\n重点：运行 make run"


def test_hidden_and_other_files_are_ignored(tmp_path: Path):
    (tmp_path / "a.md").write_text("# 甲\n内容", encoding="utf-8")
    (tmp_path / "_draft.md").write_text("# 草稿\n内容", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.md").write_text("# 隐藏\n内容", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("丙\n内容", encoding="utf-8")
    assert [p.title for p in load_passages(tmp_path)] == ["甲", "丙"]


def test_live_kb_reloads_on_change_and_keeps_the_old_index_on_error(tmp_path: Path):
    events: list[tuple[str, int]] = []
    (tmp_path / "a.md").write_text("# 甲\n内容一", encoding="utf-8")
    live = LiveKnowledgeBase(tmp_path, on_reload=lambda r, n: events.append((r, n)))
    assert events == [("ok", 1)]
    assert live.reload_if_changed() is False
    (tmp_path / "b.md").write_text("# 乙\n内容二\n# 丙\n内容三", encoding="utf-8")
    assert live.reload_if_changed() is True
    assert len(live.current) == 3 and events[-1] == ("ok", 3)
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"# \xff\xfe broken")
    assert live.reload_if_changed() is False
    assert len(live.current) == 3 and events[-1] == ("error", 3)
    assert live.reload_if_changed() is False  # the same failure is counted once
    assert events.count(("error", 3)) == 1
    bad.unlink()
    os.utime(tmp_path / "a.md", ns=(1, 1))  # a changed mtime alone is a change
    assert live.reload_if_changed() is True
    assert events[-1] == ("ok", 3)


def test_synonyms_file_change_triggers_a_reload(tmp_path: Path):
    (tmp_path / "a.md").write_text("# 密钥泄露\n立即重置。", encoding="utf-8")
    live = LiveKnowledgeBase(tmp_path)
    (tmp_path / "_synonyms.txt").write_text("泄露 曝光\n", encoding="utf-8")
    assert live.reload_if_changed() is True
    assert live.current.synonyms["曝光"] == "泄露"


def test_a_kb_folder_that_disappears_is_a_failed_reload(tmp_path: Path):
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "a.md").write_text("# 甲\n内容一\n# 乙\n内容二", encoding="utf-8")
    events: list[tuple[str, int]] = []
    live = LiveKnowledgeBase(kb_dir, on_reload=lambda r, n: events.append((r, n)))
    kb_dir.rename(tmp_path / "kb.old")  # renamed away, or unmounted
    assert live.reload_if_changed() is False
    assert len(live.current) == 2 and events == [("ok", 2), ("error", 2)]
    assert live.current.search("甲")[0].passage.title == "甲"
    with pytest.raises(FileNotFoundError):
        load_passages(kb_dir)  # a folder gone between the check and the load fails too
    (tmp_path / "kb.old").rename(kb_dir)
    (kb_dir / "b.md").write_text("# 丙\n内容三", encoding="utf-8")
    assert live.reload_if_changed() is True
    assert events[-1] == ("ok", 3)
