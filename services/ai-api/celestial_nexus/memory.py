"""What the AI API keeps about a user: recent conversation turns and parked answer parts.

Keys are namespaced `cn:ai:<kind>:<openid>`; `forget_user` erases both (WeChat requires
deleting a user's data on unsubscribe).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .store import Store

KEY_PREFIX = "cn:ai:"
MAX_TURN_CHARS = 1500  # one remembered message; keeps prompts bounded


def memory_key(openid: str) -> str:
    return f"{KEY_PREFIX}mem:{openid}"


def parked_key(openid: str) -> str:
    return f"{KEY_PREFIX}parts:{openid}"


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant
    content: str


class ConversationMemory:
    """The last `turns` question/answer pairs of each user, forgotten after `ttl_s` of silence."""

    def __init__(self, store: Store, turns: int, ttl_s: int) -> None:
        self.store = store
        self.turns = turns
        self.ttl_s = ttl_s

    async def history(self, openid: str) -> list[Turn]:
        if not self.turns:
            return []
        turns = []
        for raw in await self.store.get_list(memory_key(openid)):
            try:
                item = json.loads(raw)
                turns.append(Turn(role=str(item["role"]), content=str(item["content"])))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged entry is dropped, not fatal
        return turns

    async def remember(self, openid: str, question: str, answer: str) -> None:
        if not self.turns:
            return
        items = [
            json.dumps({"role": "user", "content": question[:MAX_TURN_CHARS]}, ensure_ascii=False),
            json.dumps(
                {"role": "assistant", "content": answer[:MAX_TURN_CHARS]}, ensure_ascii=False
            ),
        ]
        await self.store.push_trim(memory_key(openid), items, 2 * self.turns, self.ttl_s)

    async def clear(self, openid: str) -> None:
        await self.store.delete(memory_key(openid))


class ParkedParts:
    """The rest of a long answer, handed out one part per `继续`."""

    def __init__(self, store: Store, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def park(self, openid: str, parts: list[str]) -> None:
        """Replace whatever was parked with `parts` (an empty list clears it)."""
        await self.store.set_list(parked_key(openid), parts, self.ttl_s)

    async def next(self, openid: str) -> tuple[str | None, int]:
        """The next part and how many remain after it."""
        part = await self.store.pop_first(parked_key(openid))
        if part is None:
            return None, 0
        remaining = len(await self.store.get_list(parked_key(openid)))
        return part, remaining

    async def clear(self, openid: str) -> None:
        await self.store.delete(parked_key(openid))


async def forget_user(store: Store, openid: str) -> None:
    """Erase everything kept about a user (unsubscribe)."""
    await store.delete(memory_key(openid), parked_key(openid))
