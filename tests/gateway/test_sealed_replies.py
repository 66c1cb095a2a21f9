"""wechat_gateway.sealed_replies: replayed only for an equal reply, and bounded."""

import concurrent.futures
import sys

from wechat_gateway.sealed_replies import SealedReplies

REPLY = {"type": "text", "content": "答"}


def test_a_body_is_replayed_for_an_equal_reply_only():
    memo = SealedReplies(capacity=4)
    memo.put("k", REPLY, b"sealed")
    assert memo.get("k", dict(REPLY)) == b"sealed"
    assert memo.get("k", {"type": "text", "content": "另一个回答"}) is None
    assert memo.get("other", REPLY) is None


def test_the_oldest_entry_goes_first_and_a_rewritten_one_counts_as_new():
    memo = SealedReplies(capacity=2)
    memo.put("a", REPLY, b"a1")
    memo.put("b", REPLY, b"b")
    memo.put("a", REPLY, b"a2")  # now the newest
    memo.put("c", REPLY, b"c")
    assert len(memo) == 2
    assert memo.get("b", REPLY) is None
    assert memo.get("a", REPLY) == b"a2" and memo.get("c", REPLY) == b"c"


def test_threads_filling_the_memo_at_once_all_get_through():
    memo = SealedReplies(capacity=50)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside put() too
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in pool.map(
                lambda n: [memo.put((n, i), REPLY, b"x") for i in range(50_000)], range(8)
            ):
                pass
    finally:
        sys.setswitchinterval(interval)
    assert len(memo) == 50
