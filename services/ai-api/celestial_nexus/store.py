"""Per-user state storage: Redis when REDIS_URL is set, an in-process store otherwise.

Both stores keep short lists of strings with an expiry behind one small interface. When
Redis cannot be reached the service degrades to the in-process store (bounded by expiry
and a capacity) and tries Redis again a few seconds later, instead of failing requests.
An erasure that cannot reach Redis is remembered and replayed before Redis is used again,
and so is every list written during the outage: Redis gets the in-process value (or loses
its own), so what it held from before the outage is never read back as current.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

MAX_PENDING_DELETES = 100_000  # keys erased during an outage, waiting for Redis (~15 MB at most)
DELETE_BATCH = 500  # keys per DEL when replaying them
_WRITES = frozenset({"push_trim", "set_list", "pop_first"})


class Store(Protocol):
    """Lists of strings under keys, each key with an expiry."""

    async def get_list(self, key: str) -> list[str]: ...

    async def push_trim(self, key: str, values: list[str], keep: int, ttl_s: int) -> None:
        """Append `values`, keep only the last `keep` items, and (re)start the expiry."""

    async def set_list(self, key: str, values: list[str], ttl_s: int) -> None: ...

    async def pop_first(self, key: str) -> str | None: ...

    async def delete(self, *keys: str) -> None: ...


class LocalStore:
    """The in-process store: expiry honoured on read, least-recently-used keys evicted."""

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    def _live(self, key: str) -> list[str] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires_at, values = entry
        if expires_at <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return values

    def _put(self, key: str, values: list[str], ttl_s: float) -> None:
        if not values:
            self._data.pop(key, None)
            return
        self._data[key] = (self._clock() + ttl_s, values)
        self._data.move_to_end(key)
        while len(self._data) > self.max_keys:
            self._data.popitem(last=False)

    async def get_list(self, key: str) -> list[str]:
        return list(self._live(key) or [])

    async def push_trim(self, key: str, values: list[str], keep: int, ttl_s: int) -> None:
        current = self._live(key) or []
        self._put(key, (current + values)[-keep:] if keep else [], ttl_s)

    async def set_list(self, key: str, values: list[str], ttl_s: int) -> None:
        self._put(key, list(values), ttl_s)

    async def pop_first(self, key: str) -> str | None:
        values = self._live(key)
        if not values:
            return None
        first = values.pop(0)
        if not values:
            del self._data[key]
        return first

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    def entry(self, key: str) -> tuple[list[str], float] | None:
        """The live values of `key` and the seconds left before they expire, or None."""
        values = self._live(key)
        if not values:
            return None
        return list(values), self._data[key][0] - self._clock()

    def __len__(self) -> int:
        return len(self._data)


class RedisStore:
    """The same lists in Redis (RPUSH/LTRIM/EXPIRE in one transaction)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        # Short timeouts: an unreachable Redis must cost milliseconds, not the reply deadline.
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=0.5, decode_responses=True
        )
        return cls(client)

    async def get_list(self, key: str) -> list[str]:
        return [str(v) for v in await self.client.lrange(key, 0, -1)]

    async def push_trim(self, key: str, values: list[str], keep: int, ttl_s: int) -> None:
        if not keep:
            await self.client.delete(key)
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *values)
            pipe.ltrim(key, -keep, -1)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def set_list(self, key: str, values: list[str], ttl_s: int) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if values:
                pipe.rpush(key, *values)
                pipe.expire(key, ttl_s)
            await pipe.execute()

    async def pop_first(self, key: str) -> str | None:
        value = await self.client.lpop(key)
        return None if value is None else str(value)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.client.delete(*keys)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


class ResilientStore:
    """Redis first; the in-process store while Redis is unreachable, retried every few seconds.

    `state` is 'disabled' (no REDIS_URL), 'up' or 'down'; `on_state` reports changes.
    """

    def __init__(
        self,
        redis_store: RedisStore | None,
        local: LocalStore,
        *,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[str], None] | None = None,
        max_pending_deletes: int = MAX_PENDING_DELETES,
    ) -> None:
        self.redis = redis_store
        self.local = local
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._on_state = on_state or (lambda state: None)
        self.state = "disabled" if redis_store is None else "up"
        self._on_state(self.state)
        self.max_pending_deletes = max_pending_deletes
        # key -> the erasure's sequence number, oldest first; see _replay_deletes.
        self._pending_deletes: dict[str, int] = {}
        self._delete_seq = 0
        # Keys written in the local store during an outage, oldest first; see _carry_over.
        self._written_during_outage: dict[str, None] = {}

    def _failed(self, exc: Exception) -> None:
        if self.state != "down":
            log.warning("Redis unreachable, using the in-process store: %s", exc)
        self.state = "down"
        self._on_state("down")
        self._down_until = self._clock() + self.retry_after_s

    def _ok(self, target: Store) -> None:
        if target is self.redis and self.state != "up":
            log.info("Redis reachable again")
            self.state = "up"
            self._on_state("up")

    async def _usable_redis(self) -> RedisStore | None:
        """Redis when it is to be used now, else None. Erasures it missed are replayed
        first, so nothing a user had erased during an outage is read back from it."""
        if self.redis is None or self._clock() < self._down_until:
            return None
        try:
            await self._replay_deletes(self.redis)
            await self._carry_over(self.redis)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return self.redis

    async def _replay_deletes(self, redis_store: RedisStore) -> None:
        """Delete the keys erased while Redis was unreachable, in batches."""
        while self._pending_deletes:
            batch = dict(itertools.islice(self._pending_deletes.items(), DELETE_BATCH))
            await redis_store.delete(*batch)
            for key, seq in batch.items():
                # A key erased again meanwhile stays pending: that erasure may be newer
                # than the DEL just sent.
                if self._pending_deletes.get(key) == seq:
                    del self._pending_deletes[key]

    async def _carry_over(self, redis_store: RedisStore) -> None:
        """Give Redis what was written locally during the outage (parts waiting for 继续,
        the conversation), with what is left of its expiry; a key since emptied or expired
        is deleted there. The local copy goes: Redis holds the current value again."""
        while self._written_during_outage:
            key = next(iter(self._written_during_outage))
            entry = self.local.entry(key)
            if entry is None:
                await redis_store.delete(key)
            else:
                values, ttl_s = entry
                await redis_store.set_list(key, values, max(1, math.ceil(ttl_s)))
            self._written_during_outage.pop(key, None)
            await self.local.delete(key)

    def _remember_deletes(self, keys: tuple[str, ...]) -> None:
        """Note erasures Redis has not seen yet; beyond the bound the oldest are dropped."""
        for key in keys:
            self._delete_seq += 1
            self._pending_deletes.pop(key, None)
            self._pending_deletes[key] = self._delete_seq
        overflow = len(self._pending_deletes) - self.max_pending_deletes
        if overflow > 0:
            log.error(
                "%d erasures waited too long for Redis and are dropped: their keys may "
                "come back when Redis does (at most until they expire)",
                overflow,
            )
            for key in list(itertools.islice(self._pending_deletes, overflow)):
                del self._pending_deletes[key]

    async def _call(self, method: str, *args: Any) -> Any:
        redis_store = await self._usable_redis()
        if redis_store is not None:
            try:
                result = await getattr(redis_store, method)(*args)
            except (RedisError, OSError) as exc:
                self._failed(exc)
            else:
                self._ok(redis_store)
                return result
        if self.redis is not None and method in _WRITES:
            self._note_written(args[0])
        return await getattr(self.local, method)(*args)

    def _note_written(self, key: str) -> None:
        """Remember a key written locally during an outage, within the erasures' bound."""
        self._written_during_outage.pop(key, None)
        self._written_during_outage[key] = None
        if len(self._written_during_outage) > self.max_pending_deletes:
            oldest = next(iter(self._written_during_outage))
            del self._written_during_outage[oldest]
            log.error("writes waited too long for Redis; %s will read its older value", oldest)

    async def get_list(self, key: str) -> list[str]:
        return await self._call("get_list", key)

    async def push_trim(self, key: str, values: list[str], keep: int, ttl_s: int) -> None:
        await self._call("push_trim", key, values, keep, ttl_s)

    async def set_list(self, key: str, values: list[str], ttl_s: int) -> None:
        await self._call("set_list", key, values, ttl_s)

    async def pop_first(self, key: str) -> str | None:
        return await self._call("pop_first", key)

    async def delete(self, *keys: str) -> None:
        """Erase from both stores. Data written during an outage lives in the local store;
        an erasure Redis cannot take now is replayed when it can (WeChat requires erasing)."""
        await self.local.delete(*keys)
        if self.redis is None or not keys:
            return
        self._remember_deletes(keys)
        redis_store = await self._usable_redis()  # replays these keys with any pending
        if redis_store is not None:
            self._ok(redis_store)

    async def check(self) -> str:
        """Ping Redis now (for /health) and return the state."""
        if self.redis is not None:
            try:
                await self.redis.ping()
            except (RedisError, OSError) as exc:
                self._failed(exc)
            else:
                self._down_until = 0.0
                if await self._usable_redis() is not None:
                    self._ok(self.redis)
        return self.state

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
