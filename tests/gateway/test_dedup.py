"""wechat_gateway.dedup: the in-process store's bounds, the hand-off rules, and failover.

The rules every store must keep (attempts, hand-off, take-over, parked answers) run
against the in-process store and against RedisStore on a real redis-server.
"""

from __future__ import annotations

import json

import pytest
import redis

from wechat_gateway import logs
from wechat_gateway.dedup import (
    CUSTOM_PENDING,
    PLACEHOLDER_SENT,
    FailoverStore,
    LocalStore,
    RedisStore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
def store(request):
    if request.param == "local":
        yield LocalStore(10)
        return
    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.extra["url"])
    yield RedisStore(client)
    client.close()


def test_claim_counts_attempts_and_only_the_first_is_new(store):
    first = store.claim("k", "owner-a", 1000.0, 120, 3.0)
    second = store.claim("k", "owner-b", 1005.0, 120, 3.0)
    assert (first.is_new, first.attempt) == (True, 1)
    assert (second.is_new, second.attempt, second.owner) == (False, 2, "owner-a")


def test_a_retry_claims_the_stored_answer_and_the_owner(store):
    first = store.claim("k", "owner-a", 1000.0, 120, 3.0)
    assert first.answer is None and (first.started_at, first.lease_until) == (1000.0, 1003.0)
    store.finish("k", {"reply": {"type": "text", "content": "答"}})
    retry = store.claim("k", "owner-b", 1005.0, 120, 3.0)
    assert retry.answer == {"reply": {"type": "text", "content": "答"}}
    assert (retry.owner, retry.started_at, retry.attempt) == ("owner-a", 1000.0, 2)
    assert store.get("missing") is None


def test_finishing_an_expired_job_does_not_bring_it_back(store):
    """An answer later than the dedup window: nothing waits for it, and no key without
    an expiry is left behind."""
    assert store.finish("gone", {"reply": None}) is None
    assert store.get("gone") is None
    if isinstance(store, RedisStore):
        assert store.client.keys("*gone*") == []


def test_keys_expire_after_the_window():
    clock = Clock()
    store = LocalStore(10, clock=clock)
    store.claim("k", "a", clock.now, 120, 3.0)
    clock.now += 119
    assert store.claim("k", "a", clock.now, 120, 3.0).is_new is False
    clock.now += 2
    assert store.claim("k", "a", clock.now, 120, 3.0).is_new is True


def test_capacity_evicts_the_least_recently_used_key():
    store = LocalStore(3)
    for key in ("a", "b", "c"):
        store.claim(key, "o", 1000.0, 120, 3.0)
    store.get("a")  # touched: "b" is now the oldest
    store.claim("d", "o", 1000.0, 120, 3.0)
    assert store.get("b") is None
    assert all(store.get(key) is not None for key in ("a", "c", "d"))


def test_exactly_one_side_delivers_a_late_answer(store):
    store.claim("late", "o", 1000.0, 120, 3.0)
    assert store.hand_off("late", PLACEHOLDER_SENT, 120) is None  # the attempt gave up first
    assert store.finish("late", {"reply": "x"}) == {PLACEHOLDER_SENT}  # so the job parks it
    assert store.get("late").flags == {PLACEHOLDER_SENT}  # and a later attempt knows it
    store.claim("early", "o", 1000.0, 120, 3.0)
    assert store.finish("early", {"reply": "y"}) == set()  # nobody gave up yet
    assert store.hand_off("early", CUSTOM_PENDING, 120) == {"reply": "y"}  # the attempt sends it
    assert store.claim("early", "o", 1001.0, 120, 3.0).flags == frozenset()  # no push owns it


def test_a_finish_writes_the_workers_own_hand_offs_with_the_answer(store):
    """A hand-off the store missed (its call failed) is set with the answer, atomically,
    so an attempt on any worker reads it and answers as the hand-off did."""
    store.claim("noted", "o", 1000.0, 120, 3.0)
    assert store.finish("noted", {"reply": "x"}, frozenset({CUSTOM_PENDING})) == {CUSTOM_PENDING}
    assert store.get("noted").flags == {CUSTOM_PENDING}
    assert store.finish("noted", {"reply": "again"}, frozenset({PLACEHOLDER_SENT})) is None
    assert store.get("noted").flags == {CUSTOM_PENDING}  # the first answer's notes only


def test_the_first_answer_stored_wins(store):
    """A job taken over from an owner that was late, not dead, is finished twice: only the
    first finisher may hand the answer over, or the user gets it twice."""
    store.claim("k", "slow-owner", 1000.0, 120, 3.0)
    assert store.hand_off("k", PLACEHOLDER_SENT, 120) is None
    assert store.finish("k", {"reply": "first"}) == {PLACEHOLDER_SENT}
    assert store.finish("k", {"reply": "second"}) is None
    assert store.get("k").answer == {"reply": "first"}


def test_a_hand_off_to_a_job_redis_never_saw_expires(redis_server):
    """A job claimed in the in-process store while Redis was down, handed off once it was
    back: the flag is kept for the answer, under a key that still expires."""
    store = RedisStore(redis.Redis.from_url(redis_server.extra["url"]))
    assert store.hand_off("outage", CUSTOM_PENDING, 120) is None
    assert 0 < store.client.ttl("cn:gw:job:outage") <= 120
    assert store.finish("outage", {"reply": "late"}) == {CUSTOM_PENDING}


def test_take_over_only_an_orphaned_unanswered_job(store):
    store.claim("k", "dead", 1000.0, 120, 3.0)
    assert store.take_over("k", "alive", 1002.0, 3.0) is False  # lease still valid
    assert store.take_over("k", "alive", 1003.5, 3.0) is True
    assert store.get("k").owner == "alive"
    store.finish("k", {"reply": None})
    assert store.take_over("k", "third", 2000.0, 3.0) is False  # answered: nothing to take


def test_parked_answers_queue_per_user_and_a_new_claim_pops_one(store):
    store.park("u", {"n": 1}, 60)
    store.park("u", {"n": 2}, 60)
    job = store.claim("k", "o", 1000.0, 120, 3.0, parked_user="u")
    assert job.parked == {"n": 1}
    assert store.claim("k", "o", 1000.0, 120, 3.0, parked_user="u").parked is None  # a retry
    assert store.pop_parked("u") == {"n": 2} and store.pop_parked("u") is None


class DownRedis:
    """A RedisStore whose server is unreachable until `up` is set."""

    name = "redis"

    def __init__(self) -> None:
        self.up = False
        self.local = LocalStore(10)

    def __getattr__(self, method):
        def call(*args, **kwargs):
            if not self.up:
                raise redis.ConnectionError("connection refused")
            return getattr(self.local, method)(*args, **kwargs)

        return call


def test_failover_to_the_local_store_and_back():
    clock = Clock()
    primary = DownRedis()
    store = FailoverStore(primary, LocalStore(10), retry_after_s=2.0, clock=clock)
    job = store.claim("k", "o", 1000.0, 120, 3.0)  # Redis down: answered locally
    assert job.store == "local" and store.name == "local"
    primary.up = True
    clock.now += 1  # within the pause: Redis is not tried yet
    assert store.claim("k2", "o", 1000.0, 120, 3.0).store == "local"
    clock.now += 2
    assert store.claim("k3", "o", 1000.0, 120, 3.0).store == "local"  # primary's LocalStore
    assert store.name == "redis"


def test_an_unsubscribe_during_an_outage_still_counts_once_redis_is_back():
    """An answer in flight when the user unsubscribed while Redis was down must not be parked
    in Redis once it is back (erased_since read Redis alone)."""
    clock = Clock()
    primary = DownRedis()
    store = FailoverStore(primary, LocalStore(10), retry_after_s=2.0, clock=clock)
    store.erase_user("gh:oGone", 1000.0, 120)  # Redis down: recorded in-process
    primary.up = True
    clock.now += 10
    assert store.erased_since("gh:oGone", 999.0)
    assert store.name == "redis"


def test_redis_up_tells_the_truth_from_start_up():
    """Before any callback: a quiet gateway must still raise the RedisDown alert."""
    from tests.support.exposition import metric_sum
    from tests.support.processes import free_port
    from wechat_gateway.dedup import build_store
    from wechat_gateway.metrics_export import render_metrics

    build_store(f"redis://127.0.0.1:{free_port()}/0", 10)
    assert metric_sum(render_metrics().decode(), "wechat_redis_up") == 0


def test_a_job_claimed_while_redis_was_down_stays_in_the_in_process_store():
    """Redis back mid-job: Redis has never heard of the job, so its answer and its hand-off
    flag must meet where the job was claimed, or the late path never delivers it."""
    clock = Clock()
    primary = DownRedis()
    store = FailoverStore(primary, LocalStore(10), clock=clock)
    job = store.claim("k", "o", 1000.0, 120, 3.0)
    assert job.store == "local" and job.key != "k"
    assert store.hand_off(job.key, PLACEHOLDER_SENT, 120) is None  # the placeholder went out
    primary.up = True
    clock.now += 10  # past the pause: Redis answers again
    assert store.renew(job.key, "o", 1010.0)
    assert store.finish(job.key, {"reply": "答"}) == {PLACEHOLDER_SENT}  # so the job parks it
    assert primary.local.get("k") is None  # Redis never saw the job
    assert store.claim("k2", "o", 1005.0, 120, 3.0).key == "k2"  # a new job: Redis again


def test_a_job_in_redis_also_answers_its_in_process_copy_and_its_hand_off():
    """An attempt claimed in Redis, a retry claimed in-process during an outage (a copy of
    the job, where that retry handed off): once Redis is back the job's answer reaches
    both, so later attempts claimed in-process read it, and the copy's hand-off counts."""
    clock = Clock()
    primary = DownRedis()
    primary.up = True
    store = FailoverStore(primary, LocalStore(10), clock=clock)
    first = store.claim("k", "o", 1000.0, 120, 3.0)
    primary.up = False
    copy = store.claim("k", "o", 1005.0, 120, 3.0)
    assert copy.is_new and copy.key != first.key
    assert store.hand_off(copy.key, PLACEHOLDER_SENT, 120) is None
    primary.up = True
    clock.now += 10
    assert store.finish(first.key, {"reply": "答"}) == {PLACEHOLDER_SENT}
    assert primary.local.get("k").answer == {"reply": "答"}
    assert store.claim("k", "o", 1010.0, 120, 3.0).answer == {"reply": "答"}


def logged_events(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]


def test_a_full_local_store_evicts_answered_jobs_before_unanswered_ones(capsys):
    logs.configure("INFO", "json")
    store = LocalStore(3)
    store.claim("waiting", "o", 1000.0, 120, 3.0)  # the AI is still thinking
    for key in ("done1", "done2"):
        store.claim(key, "o", 1000.0, 120, 3.0)
        store.finish(key, {"reply": key})
    store.claim("new", "o", 1000.0, 120, 3.0)
    assert store.get("waiting") is not None and store.get("done1") is None
    assert "dedup_evicted_in_flight" not in logged_events(capsys)
    store.finish("waiting", {"reply": "答"})
    assert store.get("waiting").answer == {"reply": "答"}  # its retry is answered, not re-asked


def test_a_store_full_of_unanswered_jobs_drops_the_oldest_with_a_warning(capsys):
    logs.configure("INFO", "json")
    store = LocalStore(2)
    for key in ("a", "b", "c"):
        store.claim(key, "o", 1000.0, 120, 3.0)
    assert [store.get(k) is not None for k in ("a", "b", "c")] == [False, True, True]
    assert logged_events(capsys) == ["dedup_evicted_in_flight"]
