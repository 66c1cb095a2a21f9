"""wechat_gateway.splitting: parts within the byte limit that join back exactly."""

import pytest

from wechat_gateway.splitting import split_utf8

TEXTS = {
    "chinese": "微信公众号的回复有长度限制。" * 400,
    "english": "WeChat limits the size of a text reply. " * 300,
    "mixed": "第1步：运行 make run。Step 2: send 你好 to the account! " * 200,
    "no_boundaries": "字" * 3000,
    "emoji": "🚀" * 1200,
    "short": "你好",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_parts_fit_and_join_back(name):
    text = TEXTS[name]
    parts = split_utf8(text, 2000)
    assert "".join(parts) == text
    assert all(len(p.encode()) <= 2000 for p in parts)
    assert all(parts) or text == ""


def test_prefers_sentence_boundaries():
    parts = split_utf8("第一句话。" * 500, 2000)
    assert all(p.endswith("。") for p in parts)
