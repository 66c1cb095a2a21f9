"""Getting every user an answer across WeChat's 5-second cut and its retries.

WeChat gives each attempt about 5 s and makes three attempts of the same message. The
first attempt claims a job and starts the AI request once, with a deadline covering the
whole delivery window; every attempt, on whichever worker or replica it lands, waits for
that job's answer and returns it as soon as it exists. What happens when it does not:

- `retry`: an attempt that is not the last is held just past WeChat's cut (answering
  `success` would stop the retries); the last one sends a placeholder and the answer is
  parked for the user's next message.
- `custom`: answer `success` at the budget and push the answer through the
  customer-service API when it is ready; errors that retrying cannot fix park it.
- `off`: answer within one attempt or send WECHAT_FALLBACK_REPLY.

Exactly one party delivers a late answer: the store's `finish` and `hand_off` are atomic
against each other (see dedup.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
from gevent import monkey

from . import metrics, parked
from .ai_client import AIClient, AIError
from .config import Settings
from .dedup import (
    ABANDONED,
    CUSTOM_PENDING,
    HANDOFF_FLAGS,
    PLACEHOLDER_SENT,
    JobStore,
    StoreUnavailable,
)
from .metrics import labelled
from .replies import has_body
from .splitting import PART_BYTES, fits_one_bubble, split_utf8

log = logging.getLogger(__name__)

_REMOTE_POLL_S = 0.05
_DRAIN_POLL_S = 0.05
WECHAT_RETRY_INTERVAL_S = 5.0  # WeChat cuts an attempt at 5 s and sends the next one


def _spawn(function: Callable[..., None], *args: Any) -> None:
    """Run `function` concurrently: a greenlet under Gunicorn's gevent worker (cheap, and
    what the patched threading would create anyway), a daemon thread elsewhere."""
    if monkey.is_module_patched("threading"):
        gevent.spawn(function, *args)
    else:
        threading.Thread(target=function, args=args, daemon=True).start()


class _LocalJob(threading.Event):
    """A job this worker runs: set once its answer is stored, which waiters then read here.

    It also remembers the hand-offs this worker's attempts made (`handed_off`): a hand-off
    Redis may not have recorded (its call failed, or went to the in-process store while
    Redis was down) still binds the job to deliver the answer late. Once the answer is in,
    `delivering` holds the flags by which the job itself delivers it.
    """

    answer: dict[str, Any] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.handed_off: set[str] = set()
        self.delivering: set[str] = set()


class CustomSender(Protocol):
    def deliver(self, openid: str, reply: dict[str, Any]) -> dict[str, Any] | None:
        """Send `reply` through the customer-service API; return what must be parked."""


@dataclass
class Outcome:
    """What the view sends back for one attempt."""

    reply: dict[str, Any] | None  # a reply document to render, or None for `success`
    path: str  # first_attempt, retry, placeholder, parked, custom, fallback, none, held
    attempt: int
    dedup_hit: bool
    held: bool = False


def delivered_late(answer: dict[str, Any]) -> bool:
    """Whether a handed-off answer goes out late (pushed or parked). A fallback does not:
    the user's next message deserves a real attempt; nor does a reply with nothing to show.
    Until then an attempt sends it, whatever the hand-off flags say."""
    return has_body(answer.get("reply")) and answer.get("source") != "fallback"


def untimed(answer: dict[str, Any]) -> dict[str, Any]:
    """`answer` without `started_at`: a later part of it is not timed again."""
    return {k: v for k, v in answer.items() if k != "started_at"}


def user_key(message: dict[str, Any]) -> str:
    return f"{message['account_id']}:{message['openid']}"


class Delivery:
    """Runs jobs and answers attempts; one per worker process."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        ai: AIClient | None,
        sender: CustomSender | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ai = ai
        self.sender = sender
        self.clock = clock
        self.sleep = sleep
        # Host and pid in the owner id tell an operator (and a test) which process owns a job.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._done: dict[str, _LocalJob] = {}
        self._keeper_started = False

    # -- an attempt -------------------------------------------------------------------
    def answer(self, message: dict[str, Any], arrival: float, request_id: str = "") -> Outcome:
        """Handle one attempt of `message` that arrived at `arrival` (epoch seconds)."""
        s = self.settings
        key = message["dedup_key"]
        is_event = message.get("type") == "event"
        job = self.store.claim(
            key,
            self.owner,
            arrival,
            s.dedup_window_s,
            s.job_lease_s,
            parked_user=None if is_event else user_key(message),
            wants_rest=parked.asks_to_continue(message),
        )
        key = job.key  # the store's name for the job from here on (FailoverStore.claim)
        # Redis failed mid-job: this worker runs the message's job, claimed in Redis, and this
        # attempt was claimed in-process. It waits for that job, not for a second answer.
        runs_here = key != message["dedup_key"] and message["dedup_key"] in self._done
        labelled(metrics.DELIVERY_ATTEMPTS, str(job.attempt) if job.attempt < 4 else "4+").inc()
        if not job.is_new:
            labelled(metrics.DEDUP_HITS, job.store).inc()
            log.debug("dedup hit", extra={"event": "dedup_hit", "attempt": job.attempt})
        elif job.parked is not None:  # the user's parked answer, instead of a new AI request
            job.answer = {**self._parked_bubble(message, job.parked), "source": "parked"}
            try:  # for this message's retries; this attempt has the answer in hand
                self.store.finish(key, job.answer)
            except StoreUnavailable:
                log.warning(
                    "Redis unreachable after a parked answer was taken; sending it",
                    extra={"event": "finish_unconfirmed"},
                )
        elif not runs_here:  # a new message: its job starts here
            if job.dropped_rest:  # a new question, not 继续: the old answer's rest is dropped
                log.info(
                    "rest of a long parked answer dropped: the user asked something else",
                    extra={"event": "continuation_dropped"},
                )
            if is_event and message.get("event") == "unsubscribe":
                # Answers still in flight for this user are dropped too (_park, _push).
                self.store.erase_user(user_key(message), arrival, s.dedup_window_s)
            self._start_job(message, key, self._window_s(), request_id)

        flags = job.flags | self._handed_off_here(message["dedup_key"], key, runs_here)
        if flags and job.answer is not None and delivered_late(job.answer):
            # An earlier attempt handed the answer to the late path, which delivers it.
            return self._handed_off(flags, job.attempt)
        if runs_here:
            key = message["dedup_key"]
        last = (
            s.slow_reply_mode != "retry"
            or job.attempt >= s.max_attempts
            or self._past_retries(message, arrival)
        )
        wait_s = s.reply_budget_s if last else s.retry_hold_s
        answer: dict[str, Any] | None = job.answer
        if answer is None:
            # Even after a hand-off this attempt waits for the answer: one that ends as the
            # fallback is delivered by nobody else.
            answer, late_flags = self._wait(key, arrival + wait_s, message, request_id)
            flags |= late_flags
            if flags and (answer is None or delivered_late(answer)):
                # Handed off: the late path pushes or parks the answer.
                return self._handed_off(flags, job.attempt)
        if answer is not None:
            return self._delivered(answer, job.attempt, not job.is_new, arrival)
        return self._late(key, job.attempt, not job.is_new, arrival, last)

    def _handed_off_here(self, message_key: str, key: str, runs_here: bool) -> frozenset[str]:
        """The hand-offs this worker's attempts made for the message's job running here:
        the store may not hold them (Redis failed, or the attempt was claimed in-process),
        and a retry must answer as the attempt that handed off did, not with the answer."""
        running = self._done.get(message_key)
        if running is None or not (runs_here or key == message_key):
            return frozenset()
        return frozenset(running.handed_off)

    def _past_retries(self, message: dict[str, Any], arrival: float) -> bool:
        """WeChat's last attempt told by the message's age, its attempts coming 5 s apart.

        The attempt count alone can start again: without Redis each worker counts in its own
        store, and a Redis that comes back mid-job starts from 1. A last attempt held for a
        retry that never comes would show the user '该公众号暂时无法提供服务'.
        """
        age_s = arrival - message["create_time"]
        return age_s >= (self.settings.max_attempts - 1) * WECHAT_RETRY_INTERVAL_S - 1

    def _handed_off(self, flags: frozenset[str], attempt: int) -> Outcome:
        """A retry after the late path took the answer over: the same reply as the attempt
        that handed it over, so the answer reaches the user once (push or parked)."""
        if CUSTOM_PENDING in flags:
            return Outcome(None, "custom_pending", attempt, True)
        return Outcome(self._text(self.settings.placeholder_reply), "placeholder", attempt, True)

    def _delivered(
        self, answer: dict[str, Any], attempt: int, dedup_hit: bool, arrival: float
    ) -> Outcome:
        source = answer.get("source")
        if source in ("parked", "fallback"):
            path = source
        elif answer.get("reply") is None:
            path = "none"
        else:
            path = "first_attempt" if attempt == 1 else "retry"
        self._count_reply(path, answer)
        if source == "fallback":
            metrics.FALLBACK_REPLIES.inc()
        return Outcome(answer.get("reply"), path, attempt, dedup_hit)

    def _late(self, key: str, attempt: int, dedup_hit: bool, arrival: float, last: bool) -> Outcome:
        mode = self.settings.slow_reply_mode
        if not last:
            log.info(
                "answer not ready; holding past WeChat's cut so it retries",
                extra={"event": "held", "attempt": attempt},
            )
            return Outcome(None, "held", attempt, dedup_hit, held=True)
        flag = {"custom": CUSTOM_PENDING, "retry": PLACEHOLDER_SENT}.get(mode, ABANDONED)
        answer, promised = self._hand_off(key, flag)
        if answer is not None:  # arrived between the wait and the hand-off
            return self._delivered(answer, attempt, dedup_hit, arrival)
        if mode == "custom" and promised:
            log.info(
                "answer late; success now, customer-service push later",
                extra={"event": "custom_pending", "attempt": attempt},
            )
            return Outcome(None, "custom_pending", attempt, dedup_hit)
        if mode == "off" or not promised:
            metrics.FALLBACK_REPLIES.inc()
            self._count_reply("fallback", None)
            return Outcome(self._text(self.settings.fallback_reply), "fallback", attempt, dedup_hit)
        self._count_reply("placeholder", None)
        log.info(
            "answer late on the last attempt; placeholder sent, answer will be parked",
            extra={"event": "placeholder", "attempt": attempt},
        )
        return Outcome(
            self._text(self.settings.placeholder_reply), "placeholder", attempt, dedup_hit
        )

    def _hand_off(self, key: str, flag: str) -> tuple[dict[str, Any] | None, bool]:
        """The answer if it exists by now, and whether a late delivery can be promised.

        With Redis unreachable in the middle of a Redis job, only a job running in this
        worker can keep the promise (it reads its own note, `_LocalJob.handed_off`); a job
        running elsewhere might never learn of it, so the user gets the fallback instead of
        a placeholder for an answer nobody delivers.
        """
        local = self._done.get(key)
        late = flag in HANDOFF_FLAGS  # ABANDONED (mode off) asks for no late delivery
        try:
            answer = self.store.hand_off(key, flag, self.settings.dedup_window_s)
        except StoreUnavailable:
            log.warning(
                "Redis unreachable at the hand-off of a late answer",
                extra={"event": "handoff_unconfirmed", "runs_here": local is not None},
            )
            if local is None:
                return None, False
            answer = local.answer  # set if the job ended while Redis was being asked
        if (
            answer is not None
            and local is not None
            and flag in local.delivering
            and delivered_late(answer)
        ):
            # The hand-off reached Redis before the job finished, whichever store answered
            # this call (a lost reply falls back to the in-process copy): the job delivers.
            return None, True
        if answer is None and local is not None and late:
            local.handed_off.add(flag)
        return answer, True

    def _count_reply(self, path: str, answer: dict[str, Any] | None) -> None:
        labelled(metrics.REPLIES, path).inc()
        started = (answer or {}).get("started_at")
        if started:
            labelled(metrics.TIME_TO_ANSWER, path).observe(max(0.0, self.clock() - started))

    @staticmethod
    def _text(content: str) -> dict[str, Any] | None:
        return {"type": "text", "content": content} if content else None

    def _window_s(self) -> float:
        mode = self.settings.slow_reply_mode
        if mode == "retry":
            return self.settings.delivery_window_s
        if mode == "custom":
            return self.settings.custom_window_s
        return self.settings.reply_budget_s

    # -- waiting ----------------------------------------------------------------------
    def _wait(
        self, key: str, until: float, message: dict[str, Any], request_id: str
    ) -> tuple[dict[str, Any] | None, frozenset[str]]:
        """The job's answer once it exists (or None at `until`), and the hand-off flags it
        came with: an answer a late path delivers (park, push) is not also a reply. Takes
        over an orphaned job.

        A job this worker runs hands its answer over in memory; any other job is polled in
        the store, watching its lease.
        """
        while True:
            local = self._done.get(key)
            if local is not None:
                if local.wait(max(0.0, until - self.clock())):
                    return local.answer, frozenset(local.delivering)
                return None, frozenset()
            job = self.store.get(key)
            now = self.clock()
            if job is None:
                return None, frozenset()
            if job.answer is not None:
                return job.answer, job.flags
            # Lease run out: its owner stopped renewing. That may be this worker too: a job
            # the store says is ours but that is not in _done runs nowhere (a Redis claim
            # whose reply timed out, its job then run in-process under another key).
            if job.lease_until <= now:
                self._take_over(key, job.started_at, message, request_id)
                continue
            if now >= until:
                return None, frozenset()
            self.sleep(min(until - now, _REMOTE_POLL_S))

    def _take_over(
        self, key: str, started_at: float, message: dict[str, Any], request_id: str
    ) -> None:
        now = self.clock()
        if self.store.take_over(key, self.owner, now, self.settings.job_lease_s):
            remaining = started_at + self._window_s() - now
            log.warning(
                "job owner stopped renewing its lease; taking the job over",
                extra={"event": "job_takeover"},
            )
            self._start_job(message, key, max(remaining, 0.5), request_id)

    # -- the job itself ---------------------------------------------------------------
    def _start_job(
        self, message: dict[str, Any], key: str, window_s: float, request_id: str
    ) -> None:
        done = _LocalJob()
        self._done[key] = done
        self._ensure_lease_keeper()
        _spawn(self._run_job, message, key, window_s, request_id, done)

    def _run_job(
        self,
        message: dict[str, Any],
        key: str,
        window_s: float,
        request_id: str,
        done: _LocalJob,
    ) -> None:
        started = self.clock()
        try:
            answer = self._ask_ai(message, window_s, self._timeout_s(window_s), request_id)
            answer["started_at"] = started
            rest = self._split_off_rest(answer)
            flags = self._finish(key, answer, done)
            if flags is None:
                stored = self._stored_answer(key)
                if stored is not None:  # a job taken over from us answered first: it delivers
                    done.answer = stored
                    return
                # The store lost the job (dropped from a full in-process store, or expired):
                # nobody else can deliver it, so this worker's own hand-offs decide.
                flags = set(done.handed_off)
            done.delivering = flags
            done.answer = answer
            done.set()
            self._hand_over_late_answer(message, answer, flags)
            if rest and not flags:  # the passive reply carries the first part
                self._push_rest(message, answer, rest)
        except Exception:
            log.exception("job failed", extra={"event": "job_error"})
            if done.answer is None:
                self._finish_with_fallback(key, started, done)
        finally:
            done.set()
            self._done.pop(key, None)

    def _finish(self, key: str, answer: dict[str, Any], done: _LocalJob) -> set[str] | None:
        """Store the answer; the hand-off flags that ask for its late delivery, or None if
        a job taken over from us answered first. The store's flags, plus this worker's own
        hand-offs, which the store may have missed; with Redis unreachable, those alone
        (a placeholder another replica sent is then not followed by the answer)."""
        try:
            flags = self.store.finish(key, answer, frozenset(done.handed_off))
        except StoreUnavailable:
            log.warning(
                "Redis unreachable when the answer was ready; delivering it by this "
                "worker's own hand-offs",
                extra={"event": "finish_unconfirmed"},
            )
            return set(done.handed_off)
        return None if flags is None else flags | done.handed_off

    def _stored_answer(self, key: str) -> dict[str, Any] | None:
        job = self.store.get(key)
        return job.answer if job else None

    def _finish_with_fallback(self, key: str, started: float, done: _LocalJob) -> None:
        """A job that failed before storing its answer still answers, with the fallback:
        otherwise every attempt would wait out its budget for an answer that never comes."""
        fallback = self._text(self.settings.fallback_reply)
        done.answer = {"reply": fallback, "source": "fallback", "started_at": started}
        try:
            self.store.finish(key, done.answer)
        except Exception:
            log.exception("storing the fallback answer failed", extra={"event": "job_error"})

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the jobs this worker runs; how many were left.

        A worker told to stop (a deploy, a reload) has usually answered every request, but
        a job whose last attempt is over is the only one that can push or park its answer:
        leaving at once drops it. Its lease stays renewed meanwhile, so no replica takes
        the job over and asks the AI again.
        """
        pending = len(self._done)
        if not pending:
            return 0
        log.info(
            "waiting for jobs still running before exit",
            extra={"event": "drain", "jobs": pending, "budget_s": round(timeout_s, 1)},
        )
        deadline = self.clock() + timeout_s
        while self._done and self.clock() < deadline:
            self.sleep(_DRAIN_POLL_S)
        left = len(self._done)
        if left:
            log.warning(
                "exiting with jobs still running: their answers are lost",
                extra={"event": "drain_timeout", "jobs": left},
            )
        else:
            log.info("every job finished; exiting", extra={"event": "drained", "jobs": pending})
        return left

    def _ensure_lease_keeper(self) -> None:
        """One loop per worker renews the lease of every job this worker runs."""
        if not self._keeper_started:
            self._keeper_started = True
            _spawn(self._keep_leases)

    def _keep_leases(self) -> None:
        interval = self.settings.job_lease_s / 3
        while True:
            self.sleep(interval)
            for key in list(self._done):
                try:
                    self.store.renew(key, self.owner, self.clock() + self.settings.job_lease_s)
                except Exception:
                    log.exception("lease renewal failed", extra={"event": "lease_error"})

    def _timeout_s(self, window_s: float) -> float:
        """How long the job waits: in retry mode past the window, for a parkable answer."""
        if self.settings.slow_reply_mode == "retry":
            return max(window_s, self.settings.late_answer_timeout_s)
        return window_s

    def _ask_ai(
        self, message: dict[str, Any], window_s: float, timeout_s: float, request_id: str
    ) -> dict:
        if self.ai is None:
            return {"reply": self._text(self.settings.fallback_reply), "source": "fallback"}
        try:
            reply = self.ai.reply(
                message,
                window_s,
                request_id,
                timeout_s=timeout_s,
                whole=self.settings.slow_reply_mode == "custom",
            )
        except AIError as exc:
            log.warning(
                "AI API failed (%s): %s; answering with WECHAT_FALLBACK_REPLY",
                exc.reason,
                exc,
                extra={"event": "ai_error", "reason": exc.reason},
            )
            return {"reply": self._text(self.settings.fallback_reply), "source": "fallback"}
        return {"reply": reply, "source": "ai"}

    def _split_off_rest(self, answer: dict[str, Any]) -> str:
        """A text reply longer than one bubble keeps its first bubble; the rest to push.

        Custom mode asks for whole answers (X-Reply-Parts: all): the rest goes out as
        customer-service messages. The other modes ask for parts, and the AI API keeps the
        rest for the user's 继续 itself: a longer reply breaks that contract and is cut,
        with a warning. Parking its tail instead would answer the user's next question
        with it, and that question would never reach the AI.
        """
        reply = answer.get("reply") or {}
        if fits_one_bubble(reply):
            return ""
        content = reply["content"]
        size = len(content.encode("utf-8"))
        first, *others = split_utf8(content, PART_BYTES)
        answer["reply"] = {**reply, "content": first}
        if self.settings.slow_reply_mode != "custom":
            log.warning(
                "AI API reply of %d bytes is longer than one WeChat text bubble; cut to %d",
                size,
                len(first.encode("utf-8")),
                extra={"event": "reply_cut", "bytes": size},
            )
            return ""
        answer["rest"] = "".join(others)
        return answer["rest"]

    def _push_rest(self, message: dict[str, Any], answer: dict[str, Any], rest: str) -> None:
        """The rest of a long answer whose first part went out passively."""
        rest_reply = {"type": "text", "content": rest}
        unsent = self._push(message["openid"], rest_reply)
        if unsent is not None:
            # The user's wait ended with the passive first part: the rest is not timed.
            self._park(message, {**untimed(answer), "reply": unsent, "rest": ""})

    def _push(self, openid: str, reply: dict[str, Any]) -> dict[str, Any] | None:
        """The customer-service push; what it could not send, to be parked. An unexpected
        failure (Redis down under the token lock, a bug) parks the whole reply."""
        if self.sender is None:
            return reply
        try:
            return self.sender.deliver(openid, reply)
        except Exception:
            log.exception("customer-service push failed", extra={"event": "custom_send_error"})
            return reply

    def _hand_over_late_answer(
        self, message: dict[str, Any], answer: dict[str, Any], flags: set[str]
    ) -> None:
        """The answer came after the last attempt gave up: push it or park it, unless it is
        not `delivered_late` (a fallback, or nothing to show)."""
        if not flags or not delivered_late(answer):
            return
        if self.store.erased_since(user_key(message), answer.get("started_at", 0.0)):
            log.info(
                "late answer dropped: the user unsubscribed while it was on its way",
                extra={"event": "late_answer_erased"},
            )
            return
        reply = answer["reply"]
        if answer.get("rest"):  # nothing went out passively: send the whole answer
            reply = {**reply, "content": reply["content"] + answer["rest"]}
        if CUSTOM_PENDING in flags and self.sender is not None:
            unsent = self._push(message["openid"], reply)
            if unsent is not reply:  # the user has it, or its start: their wait ended here
                self._count_reply("custom", answer)
                answer = untimed(answer)
            if unsent is None:
                return
            reply = unsent
        self._park(message, {**answer, "reply": reply, "rest": ""})

    def _park(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Park `answer` for the user's next message, whatever it says (the placeholder
        promised it), whole: `_parked_bubble` cuts a long one when it is shown.

        A reply marked CONTINUATION is the rest of an answer the user was told to reply 继续
        for (the customer-service push ended with the hint): it waits for 继续 only.
        `started_at` goes with the entry that first shows an answer: the user's wait ends
        there, and wechat_time_to_answer_seconds must time it once.
        """
        user, ttl_s = user_key(message), self.settings.parked_ttl_s
        reply = dict(answer["reply"])
        if reply.pop(parked.CONTINUATION, False):
            rest = reply.get("content") or ""
            self.store.keep_rest(user, parked.continuation(untimed(answer), rest), ttl_s)
            log.info("rest of a pushed answer kept for 继续", extra={"event": "rest_kept"})
            return
        self.store.park(user, {**answer, "reply": reply}, ttl_s)
        log.info("late answer parked for the user's next message", extra={"event": "parked"})

    def _parked_bubble(self, message: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """What a parked entry answers now: one bubble; a longer rest is kept for the next
        继续."""
        bubble, rest = parked.first_bubble(entry["reply"])
        answer = {k: v for k, v in entry.items() if k != parked.CONTINUATION}
        if rest:
            self.store.keep_rest(
                user_key(message),
                parked.continuation(untimed(answer), rest),
                self.settings.parked_ttl_s,
            )
        return {**answer, "reply": bubble}
