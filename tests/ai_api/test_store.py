"""The in-process store (expiry, capacity) and the Redis fallback when Redis is unreachable."""

from __future__ import annotations

import asyncio

from celestial_nexus.store import LocalStore, RedisStore, ResilientStore
from tests.support.processes import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_local_store_lists_expire():
    clock = Clock()
    store = LocalStore(10, clock=clock)
    run(store.push_trim("k", ["a", "b", "c"], keep=2, ttl_s=10))
    assert run(store.get_list("k")) == ["b", "c"]
    clock.now += 9.9
    run(store.push_trim("k", ["d"], keep=2, ttl_s=10))  # refreshes the expiry
    clock.now += 9.9
    assert run(store.get_list("k")) == ["c", "d"]
    clock.now += 0.2
    assert run(store.get_list("k")) == []


def test_local_store_pop_set_delete():
    store = LocalStore(10, clock=Clock())
    run(store.set_list("p", ["1", "2"], ttl_s=5))
    assert run(store.pop_first("p")) == "1"
    assert run(store.pop_first("p")) == "2"
    assert run(store.pop_first("p")) is None
    run(store.set_list("p", ["x"], ttl_s=5))
    run(store.set_list("p", [], ttl_s=5))
    assert run(store.get_list("p")) == []
    run(store.set_list("q", ["x"], ttl_s=5))
    run(store.delete("q", "missing"))
    assert len(store) == 0


def test_local_store_is_bounded_and_evicts_the_least_recently_used():
    store = LocalStore(3, clock=Clock())
    for key in ("a", "b", "c"):
        run(store.set_list(key, [key], ttl_s=60))
    run(store.get_list("a"))  # a is used again
    run(store.set_list("d", ["d"], ttl_s=60))
    assert len(store) == 3
    assert run(store.get_list("b")) == []
    assert run(store.get_list("a")) == ["a"]


def test_unreachable_redis_degrades_to_the_local_store_and_retries():
    clock = Clock()
    states: list[str] = []

    async def scenario() -> None:
        redis_store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
        store = ResilientStore(
            redis_store,
            LocalStore(10, clock=clock),
            retry_after_s=5,
            clock=clock,
            on_state=states.append,
        )
        await store.set_list("k", ["v"], ttl_s=60)  # fails over, does not raise
        assert store.state == "down"
        assert await store.get_list("k") == ["v"]  # served locally meanwhile
        clock.now += 6
        assert await store.check() == "down"
        await store.delete("k")
        assert await store.get_list("k") == []
        await store.close()

    run(scenario())
    assert states[0] == "up" and "down" in states


def test_no_redis_means_disabled():
    store = ResilientStore(None, LocalStore(10))
    assert run(store.check()) == "disabled"


def store_behind(redis_proxy, clock: Clock) -> ResilientStore:
    """Redis through the proxy a test cuts, the retry after 5 s of `clock`."""
    return ResilientStore(
        RedisStore.from_url(redis_proxy.url),
        LocalStore(10, clock=clock),
        retry_after_s=5,
        clock=clock,
    )


def test_an_erasure_during_an_outage_reaches_redis_before_anything_is_read(redis_proxy):
    clock = Clock()

    async def scenario() -> None:
        store = store_behind(redis_proxy, clock)
        await store.push_trim("cn:ai:mem:oU", ["remembered"], keep=10, ttl_s=60)
        redis_proxy.cut()
        await store.delete("cn:ai:mem:oU")  # Redis unreachable: it still holds the key
        assert store.state == "down"
        redis_proxy.restore()
        clock.now += 6  # the retry is due
        assert await store.get_list("cn:ai:mem:oU") == []
        assert store.state == "up"
        await store.close()

    run(scenario())


def test_what_was_written_during_an_outage_is_what_redis_holds_after_it(redis_proxy):
    """Parts waiting for 继续 and the conversation, written locally while Redis was away,
    must not be replaced by Redis's older values when it is back."""
    clock = Clock()

    async def scenario() -> None:
        store = store_behind(redis_proxy, clock)
        await store.set_list("cn:ai:parts:oU", ["甲的第二段", "甲的第三段"], ttl_s=600)
        await store.push_trim("cn:ai:mem:oU", ["问甲", "答甲"], keep=10, ttl_s=600)
        redis_proxy.cut()
        await store.set_list("cn:ai:parts:oU", [], ttl_s=600)  # 乙: a short answer, no parts
        await store.push_trim("cn:ai:mem:oU", ["问乙", "答乙"], keep=10, ttl_s=600)
        assert store.state == "down"
        redis_proxy.restore()
        clock.now += 6  # the retry is due
        assert await store.pop_first("cn:ai:parts:oU") is None  # not 甲的第二段
        assert store.state == "up"
        assert await store.get_list("cn:ai:mem:oU") == ["问乙", "答乙"]
        assert 0 < await store.redis.client.ttl("cn:ai:mem:oU") <= 600
        await store.close()

    run(scenario())


class FlakyRedis:
    """Stands in for RedisStore: fails every call while `down`, records the keys deleted."""

    def __init__(self) -> None:
        self.down = False
        self.deleted: list[str] = []

    async def delete(self, *keys: str) -> None:
        if self.down:
            raise ConnectionError("refused")
        self.deleted.extend(keys)

    async def get_list(self, key: str) -> list[str]:
        if self.down:
            raise ConnectionError("refused")
        return []

    async def ping(self) -> bool:
        if self.down:
            raise ConnectionError("refused")
        return True


def test_erasures_pending_during_an_outage_are_bounded_and_replayed_once(caplog):
    clock = Clock()
    redis = FlakyRedis()
    store = ResilientStore(redis, LocalStore(10, clock=clock), clock=clock, max_pending_deletes=3)
    redis.down = True
    run(store.delete("k1", "k2"))
    run(store.delete("k3", "k4"))  # k1 is dropped: the oldest beyond the bound
    run(store.delete("k2"))  # erased again: now the newest
    assert "1 erasures waited too long" in caplog.text
    redis.down = False
    assert run(store.check()) == "up"
    assert redis.deleted == ["k3", "k4", "k2"]
    run(store.get_list("k3"))
    assert redis.deleted == ["k3", "k4", "k2"]  # replayed once, not on every call
