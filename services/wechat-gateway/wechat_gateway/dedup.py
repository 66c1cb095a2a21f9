"""The dedup store: one job per WeChat delivery, shared by every retry of it.

A job is claimed atomically (Redis `SET NX EX`) by the first attempt, counts its attempts,
holds the stored answer every retry replays, and the hand-off flags that let exactly one
party deliver a late answer (placeholder then park, or a customer-service push).
Redis makes that state common to every worker and replica; when Redis is unset or down,
a bounded in-process store (TTL + LRU of WECHAT_DEDUP_MAX keys) takes over, and Redis is
tried again after a short pause.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, cast

import redis

from . import metrics

log = logging.getLogger(__name__)

PLACEHOLDER_SENT = "placeholder_sent"
CUSTOM_PENDING = "custom_pending"
ABANDONED = "abandoned"  # WECHAT_SLOW_REPLY_MODE=off: the user got the fallback, drop the answer
HANDOFF_FLAGS = (PLACEHOLDER_SENT, CUSTOM_PENDING)  # the flags that ask for late delivery
REDIS_POOL_SIZE = 256  # per worker process; each greenlet holds one only for a round trip
_EVICTION_SCAN = 64  # oldest jobs looked at for an answered one to evict
# FailoverStore: the prefix of a job key that lives in the in-process store (see claim).
IN_PROCESS_JOB = "local|"


class StoreUnavailable(Exception):
    """Redis failed during a call on a job that only Redis holds: the outcome is unknown
    (the call may or may not have run there), and no other store may guess it."""


@dataclass
class Job:
    """What a store knows of one delivery when an attempt asks."""

    key: str
    is_new: bool
    attempt: int
    owner: str
    started_at: float
    lease_until: float
    answer: dict[str, Any] | None
    store: str
    # What a new claim took in the same round trip: on 继续 the rest of the answer last
    # shown, else the user's oldest parked answer (see _CLAIM).
    parked: dict[str, Any] | None = None
    # The hand-off flags set so far: a late delivery (push or park) owns the answer.
    flags: frozenset[str] = frozenset()
    # A new claim that did not ask for more dropped the rest of the user's last long answer.
    dropped_rest: bool = False


class JobStore(Protocol):
    @property
    def name(self) -> str: ...

    def claim(
        self,
        key: str,
        owner: str,
        now: float,
        window_s: int,
        lease_s: float,
        parked_user: str | None = None,
        wants_rest: bool = False,
    ) -> Job: ...
    def get(self, key: str) -> Job | None: ...
    def renew(self, key: str, owner: str, lease_until: float) -> bool: ...
    def take_over(self, key: str, owner: str, now: float, lease_s: float) -> bool: ...
    def finish(
        self, key: str, answer: dict[str, Any], notes: frozenset[str] = frozenset()
    ) -> set[str] | None:
        """Store the answer; its hand-off flags, `notes` (the worker's own) included, or
        None when the job is answered already or gone."""

    def hand_off(self, key: str, flag: str, ttl_s: int) -> dict[str, Any] | None: ...
    def park(self, user: str, answer: dict[str, Any], ttl_s: int) -> None: ...
    def keep_rest(self, user: str, rest: dict[str, Any], ttl_s: int) -> None:
        """Keep the rest of the user's long answer for their 继续, replacing an older one."""

    def pop_parked(self, user: str) -> dict[str, Any] | None: ...
    def erase_user(self, user: str, now: float, ttl_s: int) -> None: ...
    def erased_since(self, user: str, since: float) -> bool: ...
    def ping(self) -> bool: ...


class LocalStore:
    """In-process store: per-worker, bounded by `capacity` keys (LRU) and by each key's TTL."""

    name = "local"

    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._parked: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._erased: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> when
        self._rest: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def _live(self, table: OrderedDict, key: str) -> Any:
        entry = table.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self.clock():
            del table[key]
            return None
        table.move_to_end(key)
        return value

    def _put(self, table: OrderedDict, key: str, value: Any, ttl_s: float) -> None:
        table[key] = (self.clock() + ttl_s, value)
        table.move_to_end(key)
        while len(table) > self.capacity:
            table.popitem(last=False)

    def _put_job(self, key: str, state: dict[str, Any], ttl_s: float) -> None:
        """Store a new job; past capacity the oldest answered (or expired) job makes room.

        Evicting a job still waiting for its AI answer would have its next retry ask the
        AI again, and would drop its late answer. Only when the oldest jobs are all
        unanswered (a burst beyond WECHAT_DEDUP_MAX) does the oldest go, with a warning.
        """
        jobs, now = self._jobs, self.clock()
        jobs[key] = (now + ttl_s, state)
        while len(jobs) > self.capacity:
            victim = next(
                (
                    name
                    for name, (expires_at, job) in islice(jobs.items(), _EVICTION_SCAN)
                    if job.get("answer") or expires_at <= now
                ),
                None,
            )
            if victim is None:
                victim = next(iter(jobs))
                log.warning(
                    "in-process dedup store full of unanswered jobs; the oldest is dropped",
                    extra={"event": "dedup_evicted_in_flight", "capacity": self.capacity},
                )
            del jobs[victim]

    @staticmethod
    def _view(key: str, state: dict[str, Any], is_new: bool, attempt: int) -> Job:
        return Job(
            key,
            is_new,
            attempt,
            state["owner"],
            state["started_at"],
            state["lease_until"],
            state.get("answer"),
            "local",
            flags=frozenset(flag for flag in HANDOFF_FLAGS if state.get(flag)),
        )

    def claim(
        self,
        key: str,
        owner: str,
        now: float,
        window_s: int,
        lease_s: float,
        parked_user: str | None = None,
        wants_rest: bool = False,
    ) -> Job:
        with self._lock:
            state = self._live(self._jobs, key)
            if state is None:
                state = {
                    "owner": owner,
                    "started_at": now,
                    "lease_until": now + lease_s,
                    "attempts": 1,
                }
                self._put_job(key, state, window_s)
                job = self._view(key, state, True, 1)
                if parked_user is not None:
                    job.parked, job.dropped_rest = self._take_parked_locked(parked_user, wants_rest)
                return job
            state["attempts"] += 1
            return self._view(key, state, False, state["attempts"])

    def holds(self, key: str) -> bool:
        """Whether a live job of `key` is here (FailoverStore asks on every claim)."""
        with self._lock:
            return self._live(self._jobs, key) is not None

    def get(self, key: str) -> Job | None:
        with self._lock:
            state = self._live(self._jobs, key)
            return None if state is None else self._view(key, state, False, state["attempts"])

    def renew(self, key: str, owner: str, lease_until: float) -> bool:
        with self._lock:
            state = self._live(self._jobs, key)
            if state is None or state["owner"] != owner:
                return False
            state["lease_until"] = lease_until
            return True

    def take_over(self, key: str, owner: str, now: float, lease_s: float) -> bool:
        with self._lock:
            state = self._live(self._jobs, key)
            if state is None or state.get("answer") is not None or state["lease_until"] > now:
                return False
            state["owner"], state["lease_until"] = owner, now + lease_s
            return True

    def finish(
        self, key: str, answer: dict[str, Any], notes: frozenset[str] = frozenset()
    ) -> set[str] | None:
        with self._lock:
            state = self._live(self._jobs, key)
            if state is None or state.get("answer") is not None:
                return None
            state["answer"] = answer
            for flag in notes:
                state[flag] = True
            return {flag for flag in HANDOFF_FLAGS if state.get(flag)}

    def hand_off(self, key: str, flag: str, ttl_s: int) -> dict[str, Any] | None:
        with self._lock:
            state = self._live(self._jobs, key)
            if state is None:
                return None
            if state.get("answer") is None:
                state[flag] = True
            return state.get("answer")

    def park(self, user: str, answer: dict[str, Any], ttl_s: int) -> None:
        with self._lock:
            queue = self._live(self._parked, user) or []
            self._put(self._parked, user, [*queue, answer], ttl_s)

    def keep_rest(self, user: str, rest: dict[str, Any], ttl_s: int) -> None:
        with self._lock:
            self._put(self._rest, user, rest, ttl_s)

    def _take_parked_locked(
        self, user: str, wants_rest: bool
    ) -> tuple[dict[str, Any] | None, bool]:
        """What a user's new message takes (as _CLAIM does): 继续 takes the rest of the answer
        last shown, any other message drops it; then the oldest promised answer. The entry
        taken, and whether a rest was dropped."""
        rest = self._live(self._rest, user)
        self._rest.pop(user, None)
        if wants_rest and rest is not None:
            return rest, False
        return self._pop_parked_locked(user), rest is not None and not wants_rest

    def pop_parked(self, user: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pop_parked_locked(user)

    def _pop_parked_locked(self, user: str) -> dict[str, Any] | None:
        queue = self._live(self._parked, user)
        if not queue:
            return None
        first = queue.pop(0)
        if not queue:
            del self._parked[user]
        return first

    def erase_user(self, user: str, now: float, ttl_s: int) -> None:
        with self._lock:
            self._parked.pop(user, None)
            self._rest.pop(user, None)
            self._put(self._erased, user, now, ttl_s)

    def erased_since(self, user: str, since: float) -> bool:
        with self._lock:
            erased_at = self._live(self._erased, user)
            return erased_at is not None and erased_at >= since

    def ping(self) -> bool:
        return True


# One round trip for every attempt: claim with SET NX EX, count the attempt, and on a new
# claim take what the user's message fetches: 继续 (ARGV[5] = "1") the rest of the answer
# last shown, any other message drops that rest; then, with nothing taken, the oldest
# parked (promised) answer. Returns a flat array (fewer elements to parse than HGETALL:
# this runs on every callback): claimed, the entry taken or "", rest dropped (0/1), then
# the job's fields named in ARGV[6..] (_JOB_FIELDS), "" for a missing one.
_JOB_FIELDS = ("attempts", "owner", "started_at", "lease_until", "answer", *HANDOFF_FLAGS)
_CLAIM = """
local claimed = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local parked, dropped = '', 0
if claimed then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'started_at', ARGV[2], 'lease_until', ARGV[3])
  if KEYS[3] ~= '' then
    if ARGV[5] == '1' then parked = redis.call('GETDEL', KEYS[4]) or ''
    else dropped = redis.call('DEL', KEYS[4]) end
    if parked == '' then parked = redis.call('LPOP', KEYS[3]) or '' end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
local job = redis.call('HMGET', KEYS[2], unpack(ARGV, 6))
local reply = {claimed and 1 or 0, parked, dropped}
for i = 1, #ARGV - 5 do reply[#reply + 1] = job[i] or '' end
return reply
"""
# Store the answer and read the hand-off flags in one atomic step (see _HAND_OFF). The
# first answer stored wins: a job taken over from a live but late owner is finished twice,
# and only one of them may deliver. A job whose window expired is not recreated. ARGV[2]
# (",flag,...,") holds the hand-offs the job's worker made but Redis may have missed (a
# hand-off call that failed): they are set with the answer, so every attempt reads them.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'answer') == 1 then
  return false end
redis.call('HSET', KEYS[1], 'answer', ARGV[1])
for i = 1, #ARGV - 2 do
  if string.find(ARGV[2], ',' .. ARGV[i + 2] .. ',', 1, true) then
    redis.call('HSET', KEYS[1], ARGV[i + 2], '1') end
end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
"""
# The answer when it is stored; else set the hand-off flag, so that _FINISH hands the answer
# over. Either the attempt delivers or the late path does, never both. A job key that is
# missing (Redis restarted without its data) is created with an expiry.
_HAND_OFF = """
local answer = redis.call('HGET', KEYS[1], 'answer')
if answer then return answer end
redis.call('HSET', KEYS[1], ARGV[1], '1')
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return false
"""
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lease_until', ARGV[2]) return 1 end
return 0
"""
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'answer') == 0
   and tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until', ARGV[3]) return 1 end
return 0
"""


class RedisStore:
    """Job state in Redis, shared by every worker and replica. Keys: `cn:gw:<kind>:<key>`."""

    name = "redis"

    def __init__(self, client: redis.Redis, prefix: str = "cn:gw") -> None:
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)
        self._take_over = client.register_script(_TAKE_OVER)
        self._hand_off = client.register_script(_HAND_OFF)

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}:dedup:{key}"

    def _job_key(self, key: str) -> str:
        return f"{self.prefix}:job:{key}"

    def _parked_key(self, user: str) -> str:
        return f"{self.prefix}:parked:{user}"

    def _erased_key(self, user: str) -> str:
        return f"{self.prefix}:erased:{user}"

    def _rest_key(self, user: str) -> str:
        return f"{self.prefix}:rest:{user}"

    @staticmethod
    def _view(key: str, values: list[bytes | None], is_new: bool) -> Job:
        """A Job from the values of _JOB_FIELDS (None or b"" where a field is missing)."""
        attempts, owner, started_at, lease_until, answer, *flag_values = values
        return Job(
            key,
            is_new,
            int(attempts or 1),
            owner.decode() if owner else "",
            float(started_at or 0),
            float(lease_until or 0),
            json.loads(answer) if answer else None,
            "redis",
            flags=frozenset(f for f, v in zip(HANDOFF_FLAGS, flag_values, strict=True) if v),
        )

    def claim(
        self,
        key: str,
        owner: str,
        now: float,
        window_s: int,
        lease_s: float,
        parked_user: str | None = None,
        wants_rest: bool = False,
    ) -> Job:
        users = (
            [self._parked_key(parked_user), self._rest_key(parked_user)]
            if parked_user is not None
            else ["", ""]
        )
        claimed, parked, dropped, *values = self._claim(
            keys=[self._claim_key(key), self._job_key(key), *users],
            args=[owner, repr(now), repr(now + lease_s), window_s, int(wants_rest), *_JOB_FIELDS],
        )
        job = self._view(key, values, bool(claimed))
        job.parked = json.loads(parked) if parked else None
        job.dropped_rest = bool(dropped)
        return job

    def get(self, key: str) -> Job | None:
        values = cast(list[bytes | None], self.client.hmget(self._job_key(key), _JOB_FIELDS))
        return self._view(key, values, False) if values[1] else None  # no owner: no job

    def renew(self, key: str, owner: str, lease_until: float) -> bool:
        return bool(self._renew(keys=[self._job_key(key)], args=[owner, repr(lease_until)]))

    def take_over(self, key: str, owner: str, now: float, lease_s: float) -> bool:
        return bool(
            self._take_over(keys=[self._job_key(key)], args=[owner, repr(now), repr(now + lease_s)])
        )

    def finish(
        self, key: str, answer: dict[str, Any], notes: frozenset[str] = frozenset()
    ) -> set[str] | None:
        flags = self._finish(
            keys=[self._job_key(key)],
            args=[
                json.dumps(answer, ensure_ascii=False),
                "," + ",".join(sorted(notes)) + ",",
                *HANDOFF_FLAGS,
            ],
        )
        if flags is None:  # answered already, or the job's window expired
            return None
        return {flag for flag, value in zip(HANDOFF_FLAGS, flags, strict=True) if value}

    def hand_off(self, key: str, flag: str, ttl_s: int) -> dict[str, Any] | None:
        answer = self._hand_off(keys=[self._job_key(key)], args=[flag, ttl_s])
        return json.loads(answer) if answer else None

    def park(self, user: str, answer: dict[str, Any], ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self._parked_key(user), json.dumps(answer, ensure_ascii=False))
        pipe.expire(self._parked_key(user), ttl_s)
        pipe.execute()

    def keep_rest(self, user: str, rest: dict[str, Any], ttl_s: int) -> None:
        self.client.set(self._rest_key(user), json.dumps(rest, ensure_ascii=False), ex=ttl_s)

    def pop_parked(self, user: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.client.lpop(self._parked_key(user)))
        return json.loads(raw) if raw else None

    def erase_user(self, user: str, now: float, ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._parked_key(user), self._rest_key(user))
        pipe.set(self._erased_key(user), repr(now), ex=ttl_s)
        pipe.execute()

    def erased_since(self, user: str, since: float) -> bool:
        erased_at = self.client.get(self._erased_key(user))
        return erased_at is not None and float(erased_at) >= since

    def ping(self) -> bool:
        return bool(self.client.ping())


class FailoverStore:
    """Redis first; on a Redis error the in-process store answers, and Redis is retried later.

    Requests never fail because Redis is down: they lose cross-process dedup for a while,
    which wechat_redis_up=0 and the RedisDown alert make visible.
    """

    def __init__(
        self,
        primary: RedisStore,
        fallback: LocalStore,
        retry_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._down_until = 0.0
        metrics.redis_up().set(1)

    @property
    def name(self) -> str:
        return self.fallback.name if self.redis_down else self.primary.name

    @property
    def redis_down(self) -> bool:
        return self.clock() < self._down_until

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._served(method, *args, **kwargs)[0]

    def _served(
        self, method: str, *args: Any, job_key: str | None = None, **kwargs: Any
    ) -> tuple[Any, bool]:
        """The call's result, and whether the in-process store gave it. With `job_key`,
        the in-process store stands in only if it holds a job of that key."""
        if not self.redis_down:
            try:
                result = getattr(self.primary, method)(*args, **kwargs)
            except (redis.RedisError, OSError) as exc:
                self._mark_down(exc)
            else:
                if self._down_until:
                    log.info(
                        "redis reachable again; dedup store back on redis",
                        extra={"event": "redis_up"},
                    )
                    self._down_until = 0.0
                    metrics.redis_up().set(1)
                return result, False
        if job_key is not None and not self.fallback.holds(job_key):
            raise StoreUnavailable(f"{method} of a job in Redis while Redis is unreachable")
        return getattr(self.fallback, method)(*args, **kwargs), True

    def _mark_down(self, exc: Exception) -> None:
        if not self._down_until:
            log.warning(
                "redis unreachable (%s); using the in-process dedup store",
                type(exc).__name__,
                extra={"event": "redis_down"},
            )
        self._down_until = self.clock() + self.retry_after_s
        metrics.redis_up().set(0)

    def claim(
        self,
        key: str,
        owner: str,
        now: float,
        window_s: int,
        lease_s: float,
        parked_user: str | None = None,
        wants_rest: bool = False,
    ) -> Job:
        """The job, its `key` naming the store that holds it for the calls that follow.

        A job claimed in the in-process store (Redis down, or a claim whose reply was lost)
        stays there when Redis comes back, and so do its retries that reach this worker:
        Redis has never heard of it, so its answer would be refused there (no such job),
        a retry would ask the AI again, and the late path would never deliver it.
        """
        if self.fallback.holds(key):
            job = self.fallback.claim(key, owner, now, window_s, lease_s, parked_user, wants_rest)
            in_process = True
        else:
            job, in_process = self._served(
                "claim", key, owner, now, window_s, lease_s, parked_user, wants_rest
            )
        if in_process:
            job.key = IN_PROCESS_JOB + key
        return job

    def _job_call(self, method: str, key: str, *args: Any) -> Any:
        if key.startswith(IN_PROCESS_JOB):
            return getattr(self.fallback, method)(key[len(IN_PROCESS_JOB) :], *args)
        return self._call(method, key, *args)

    def _decisive_job_call(self, method: str, key: str, *args: Any) -> tuple[Any, bool]:
        """The result of finish or hand_off, which decide who delivers an answer, and
        whether the in-process store gave it. For a job in Redis, the in-process store
        stands in only if it holds a job of that message: its "no such job" would read as
        "answered elsewhere" (an answer dropped) or as "flag set" (a placeholder promising
        an answer nobody parks)."""
        if key.startswith(IN_PROCESS_JOB):
            return self._job_call(method, key, *args), True
        return self._served(method, key, *args, job_key=key)

    def get(self, key: str) -> Job | None:
        return self._job_call("get", key)

    def renew(self, key: str, owner: str, lease_until: float) -> bool:
        return self._job_call("renew", key, owner, lease_until)

    def take_over(self, key: str, owner: str, now: float, lease_s: float) -> bool:
        return self._job_call("take_over", key, owner, now, lease_s)

    def finish(
        self, key: str, answer: dict[str, Any], notes: frozenset[str] = frozenset()
    ) -> set[str] | None:
        """The answer of a job in Redis also answers this worker's in-process copy of it, if
        a Redis outage made one: later attempts claimed there read it, and a hand-off
        made there during the outage is honoured."""
        flags, in_process = self._decisive_job_call("finish", key, answer, notes)
        if not in_process and self.fallback.holds(key):
            # The copy answers its attempts as Redis would: with Redis's flags too.
            copy_flags = self.fallback.finish(key, answer, frozenset(flags or ()) | notes)
            if flags is not None and copy_flags:
                flags = flags | copy_flags
        return flags

    def hand_off(self, key: str, flag: str, ttl_s: int) -> dict[str, Any] | None:
        return self._decisive_job_call("hand_off", key, flag, ttl_s)[0]

    def park(self, user: str, answer: dict[str, Any], ttl_s: int) -> None:
        self._call("park", user, answer, ttl_s)

    def keep_rest(self, user: str, rest: dict[str, Any], ttl_s: int) -> None:
        self._call("keep_rest", user, rest, ttl_s)

    def pop_parked(self, user: str) -> dict[str, Any] | None:
        return self._call("pop_parked", user)

    def erase_user(self, user: str, now: float, ttl_s: int) -> None:
        """Erased in both stores: a Redis outage may have parked the user's answers here."""
        self.fallback.erase_user(user, now, ttl_s)
        self._call("erase_user", user, now, ttl_s)

    def erased_since(self, user: str, since: float) -> bool:
        """Either store: an unsubscribe during an outage was recorded in this worker only."""
        return self.fallback.erased_since(user, since) or bool(
            self._call("erased_since", user, since)
        )

    def ping(self) -> bool:
        try:
            return self.primary.ping()
        except (redis.RedisError, OSError):
            return False

    def probe(self) -> None:
        """Reach Redis once now: wechat_redis_up then tells the truth from start-up, not
        from the first callback (a quiet gateway would never raise the RedisDown alert)."""
        try:
            self.primary.ping()
        except (redis.RedisError, OSError) as exc:
            self._mark_down(exc)


def build_store(redis_url: str | None, capacity: int) -> JobStore:
    """Redis with in-process fallback when REDIS_URL is set, else the in-process store."""
    local = LocalStore(capacity)
    if not redis_url:
        return local
    # A blocking pool: a burst of greenlets waits briefly for a connection instead of
    # failing with MaxConnectionsError (which would look like Redis being down).
    pool = redis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=REDIS_POOL_SIZE,
        timeout=2.0,
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        health_check_interval=10,
    )
    store = FailoverStore(RedisStore(redis.Redis(connection_pool=pool)), local)
    store.probe()
    return store
