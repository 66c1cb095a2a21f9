"""The reply body each recent message was answered with, so WeChat's retries get the same bytes.

The projects before us learnt to store the rendered reply, so that every retry of a message
gets the identical reply (docs: `../shared/notes/wechat-protocol.md`, lesson 2). The job
store keeps the answer document, which crosses processes through Redis; this per-process
memo keeps what the endpoint made of it: the passive-reply XML, encrypted and signed. A
retry whose reply is the same document, opened in the same mode with the same token and
AES key, gets those bytes again rather than a new rendering with a new CreateTime, nonce
and random prefix, and costs no encryption.

Bounded like the in-process dedup store (WECHAT_DEDUP_MAX): the oldest entry goes first.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any


class SealedReplies:
    """(message, mode, token, key) -> the reply document and the body sealed from it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._bodies: dict[Hashable, tuple[dict[str, Any], bytes]] = {}
        self._lock = threading.Lock()  # eviction iterates the dict another thread may grow

    def get(self, key: Hashable, reply: dict[str, Any]) -> bytes | None:
        """The body sealed for `key`, if it was sealed from a reply equal to `reply`."""
        entry = self._bodies.get(key)
        if entry is not None and entry[0] == reply:
            return entry[1]
        return None

    def put(self, key: Hashable, reply: dict[str, Any], body: bytes) -> None:
        with self._lock:
            bodies = self._bodies
            bodies.pop(key, None)  # inserted again at the end: the last to be evicted
            bodies[key] = (reply, body)
            while len(bodies) > self.capacity:
                del bodies[next(iter(bodies))]

    def __len__(self) -> int:
        return len(self._bodies)
