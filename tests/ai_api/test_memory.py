"""Conversation memory and parked parts over the in-process store."""

from __future__ import annotations

import asyncio

from celestial_nexus.memory import (
    ConversationMemory,
    ParkedParts,
    Turn,
    forget_user,
    memory_key,
    parked_key,
)
from celestial_nexus.store import LocalStore


def test_keys_are_namespaced():
    assert memory_key("oU") == "cn:ai:mem:oU"
    assert parked_key("oU") == "cn:ai:parts:oU"


def test_memory_keeps_the_last_turns_and_clears():
    async def scenario() -> None:
        memory = ConversationMemory(LocalStore(10), turns=2, ttl_s=60)
        for i in range(3):
            await memory.remember("oU", f"q{i}", f"a{i}")
        assert await memory.history("oU") == [
            Turn("user", "q1"),
            Turn("assistant", "a1"),
            Turn("user", "q2"),
            Turn("assistant", "a2"),
        ]
        assert await memory.history("other") == []
        await memory.clear("oU")
        assert await memory.history("oU") == []

    asyncio.run(scenario())


def test_memory_off_and_damaged_entries():
    async def scenario() -> None:
        store = LocalStore(10)
        off = ConversationMemory(store, turns=0, ttl_s=60)
        await off.remember("oU", "q", "a")
        assert await off.history("oU") == []
        await store.push_trim(memory_key("oU"), ["not json", '{"role": "user"}'], 10, 60)
        memory = ConversationMemory(store, turns=3, ttl_s=60)
        await memory.remember("oU", "q", "a")
        assert await memory.history("oU") == [Turn("user", "q"), Turn("assistant", "a")]

    asyncio.run(scenario())


def test_parked_parts_come_out_in_order_and_forget_user_erases_all():
    async def scenario() -> None:
        store = LocalStore(10)
        parked = ParkedParts(store, ttl_s=60)
        await parked.park("oU", ["p2", "p3"])
        assert await parked.next("oU") == ("p2", 1)
        await ConversationMemory(store, 3, 60).remember("oU", "q", "a")
        await forget_user(store, "oU")
        assert await parked.next("oU") == (None, 0)
        assert await store.get_list(memory_key("oU")) == []

    asyncio.run(scenario())
