"""WeChat callback signatures: sort + SHA-1, compared in constant time over accepted tokens.

`signature` = sha1(sorted(token, timestamp, nonce)) comes with every callback;
`msg_signature` = sha1(sorted(token, timestamp, nonce, Encrypt)) only in AES mode.
https://developers.weixin.qq.com/doc/service/en/Message_Management/Message_encryption_and_decryption_instructions.html
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def compute_signature(token: str, timestamp: str, nonce: str, *extra: str) -> str:
    """SHA-1 hex of the lexicographically sorted, concatenated fields."""
    joined = "".join(sorted([token, timestamp, nonce, *extra]))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()  # noqa: S324 - WeChat's protocol


def matching_token(
    signature: str, tokens: Iterable[str], timestamp: str, nonce: str, *extra: str
) -> str | None:
    """The accepted token that produces `signature`, or None.

    Every token is compared (no early exit) with hmac.compare_digest, so the time taken
    does not reveal how much of a forged signature was right nor which token matched.
    """
    provided = signature.strip().lower().encode("ascii", "replace")
    found = None
    for token in tokens:
        expected = compute_signature(token, timestamp, nonce, *extra).encode("ascii")
        if hmac.compare_digest(expected, provided) and found is None:
            found = token
    return found


def timestamp_within_skew(timestamp: str, now_s: float, max_skew_s: int) -> bool:
    """True when `timestamp` (Unix seconds) is within max_skew_s of now; 0 disables the check."""
    if max_skew_s == 0:
        return True
    try:
        sent_s = int(timestamp)
    except ValueError:
        return False
    return abs(now_s - sent_s) <= max_skew_s
