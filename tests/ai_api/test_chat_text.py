"""Markdown to chat text, and splitting long answers into WeChat-sized parts."""

from __future__ import annotations

import random

import pytest

from celestial_nexus.chat_text import markdown_to_plain, split_text, utf8_len

CHINESE = (
    "微信的文字回复最多大约两千字节。超过以后，消息会被截断，用户看不到后面的内容！"
    "所以我们按段落和句子切分，每一段都不超过上限？是的。\n\n"
)
ENGLISH = (
    "WeChat cuts a text reply at about two thousand bytes. Longer answers are split on "
    "paragraph and sentence boundaries; each part fits in one bubble.\n\n"
)
MIXED = "在 WeChat 里，token验证失败 usually means 80/443 端口不通。Emoji 也要完整：👍🏽🇨🇳。\n"


def _random_text(seed: int) -> str:
    rng = random.Random(seed)
    pieces = [CHINESE, ENGLISH, MIXED, "。", "\n", " ", "a" * 50, "汉" * 700, "😀" * 100]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))


@pytest.mark.parametrize(
    "text",
    [CHINESE * 40, ENGLISH * 40, MIXED * 60, "汉" * 5000, "a" * 9000, "😀" * 1200, "短回答。", ""]
    + [_random_text(seed) for seed in range(40)],
)
def test_parts_fit_and_join_back_exactly(text):
    parts = split_text(text, 2000)
    assert "".join(parts) == text  # nothing lost, nothing duplicated
    assert all(utf8_len(p) <= 2000 for p in parts)
    assert all(p for p in parts)
    if utf8_len(text) <= 2000:
        assert parts == ([text] if text else [])


def test_split_never_cuts_inside_a_character():
    text = "汉" * 1000  # 3 bytes each: 2000 is not a multiple of 3
    parts = split_text(text, 2000)
    assert [utf8_len(p) for p in parts] == [1998, 1002]
    for part in parts:
        part.encode("utf-8").decode("utf-8")


@pytest.mark.parametrize("unit", ["👍🏽", "👨\u200d👩\u200d👧", "e\u0301", "❤\ufe0f"])
def test_split_keeps_emoji_sequences_and_combining_marks_whole(unit):
    text = unit * 1500
    parts = split_text(text, 2000)
    assert "".join(parts) == text
    assert all(p.startswith(unit[0]) and p == unit * (len(p) // len(unit)) for p in parts)


def test_split_prefers_paragraphs_then_sentences():
    paragraph = "这是一句话。" * 60  # 1080 bytes
    parts = split_text(f"{paragraph}\n\n{paragraph}\n\n{paragraph}", 2000)
    assert parts[0] == f"{paragraph}\n\n"
    sentences = "这是一句比较长的话，里面有逗号。" * 100
    parts = split_text(sentences, 2000)
    assert all(p.endswith("。") for p in parts)
    english = "This is a sentence. " * 200
    parts = split_text(english, 2000)
    assert all(p.endswith(". ") for p in parts[:-1])


def test_split_never_cuts_inside_a_url():
    """A '?' or ':' inside a link is not a sentence or clause end: a cut link works nowhere."""
    url = "https://mp.weixin.qq.com/wiki?t=resource/res_main&id=mp1421135319"
    paragraph = "配置公众号服务器时请先确认令牌与密钥一致，然后在后台提交。" * 21
    parts = split_text(f"{paragraph}详细步骤见 {url} 这一页，按说明核对即可。", 1900)
    assert len(parts) == 2 and any(url in part for part in parts)
    links = [f"https://example.com/p{i}?q=1:2" for i in range(80)]
    parts = split_text(" ".join(links), 500)
    assert all(any(link in part for part in parts) for link in links)


def test_split_rejects_a_budget_below_one_character():
    with pytest.raises(ValueError, match="max_bytes"):
        split_text("abc", 3)


@pytest.mark.parametrize(
    ("markdown", "plain"),
    [
        ("## 标题\n正文", "【标题】\n正文"),
        ("**粗体** 和 *斜体* 和 `代码` 和 ~~删除~~", "粗体 和 斜体 和 代码 和 删除"),
        ("- 一\n* 二\n+ 三", "• 一\n• 二\n• 三"),
        ("- 外\n  - 嵌套", "• 外\n  • 嵌套"),
        ("1. 第一步\n2. 第二步", "1. 第一步\n2. 第二步"),
        ("[文档](https://example.com/docs)", "文档（https://example.com/docs）"),
        ("[https://a.b](https://a.b)", "https://a.b"),
        ("![图](https://x/y.png)", "图 https://x/y.png"),
        ("> 引用的话", "引用的话"),
        ("上面\n\n---\n\n下面", "上面\n\n下面"),
        ("```bash\nmake run\n```", "make run"),
        ("| 名称 | 默认 |\n|---|---|\n| PORT | 8000 |", "名称  默认\nPORT  8000"),
        ("a<br>b", "ab"),
        ("第一段\n\n\n\n第二段", "第一段\n\n第二段"),
        ("普通文本，没有标记。2*3*4 = 24", "普通文本，没有标记。2*3*4 = 24"),
        ("snake_case_name 保持不变", "snake_case_name 保持不变"),
        ("体积 = 长*宽*高", "体积 = 长*宽*高"),
        # Code and URLs are kept as written: emphasis rules must not eat their underscores.
        ("编辑 `__init__.py` 文件", "编辑 __init__.py 文件"),
        ("`a<br>b` 里的标签", "a<br>b 里的标签"),
        ("见 https://example.com/a__b__c 。", "见 https://example.com/a__b__c 。"),
        (
            "[维基](https://en.wikipedia.org/wiki/Python_(programming_language))",
            "维基（https://en.wikipedia.org/wiki/Python_(programming_language)）",
        ),
    ],
)
def test_markdown_to_plain(markdown, plain):
    assert markdown_to_plain(markdown) == plain
