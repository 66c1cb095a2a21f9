"""Slow AI answers (issue 4): many users waiting on a slow AI, one gateway, WeChat's retries.

One gateway with its production settings (gunicorn.conf.py: 2 gevent workers; Redis when
redis-server is installed, as compose runs it), a fake AI API whose latency is set per
message (tests/support/fake_ai.py), and WeChat simulators (tests/support/wechat.py: 5 s
cut, up to three attempts of the same MsgId) running the conversations on threads, all
released at once:

- baseline: 200 conversations whose answers are instant (time to answer and memory with
  the same concurrency but nothing held);
- 200 conversations whose AI answers take 3 s. Target: every callback answered with the
  AI's answer within 5 s, on the first attempt;
- 50 conversations whose answers take 8 s. Target: every user's answer arrives on a
  retry (attempt 2 or 3), with the AI called once per message.
Gateway memory is the RSS of the Gunicorn master and its workers, read from /proc: idle,
and the peak of each phase (sampled every 100 ms). The gateway's log events that explain a
miss (redis_down, job_takeover, placeholder, ai_error, exception) are counted per phase.

Run: .venv/bin/python -m bench slow   (about half a minute; results in bench/results/)
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    machine,
    process_tree_rss_kib,
    redis_if_available,
    verdict,
    write_result,
)
from tests.support.fake_ai import FakeAI
from tests.support.processes import start_gateway
from tests.support.wechat import Account, Delivery, WeChatSimulator, text_message

WORKERS = 2  # gunicorn.conf.py's default, what .env.example and compose run
CUT_S = 5.0
PHASES = (
    # name, conversations, AI latency (s)
    ("baseline: instant answers", 200, 0.0),
    ("answers in 3 s", 200, 3.0),
    ("answers in 8 s", 50, 8.0),
)
ACCOUNT = Account()


def latency_of(message: dict[str, Any]) -> float:
    """The fake AI's latency for a message: its content starts with 'latency:<s>:'."""
    content = message.get("content") or ""
    return float(content.split(":")[1]) if content.startswith("latency:") else 0.0


def dedup_key(fields: dict[str, str]) -> str:
    return f"msg:{fields['MsgId']}:{fields['FromUserName']}:{fields['CreateTime']}"


class MemorySampler:
    """Peak RSS of the gateway's process tree, sampled on a thread while a phase runs."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, process_tree_rss_kib(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


WATCHED_EVENTS = ("redis_down", "job_takeover", "placeholder", "ai_error", "exception")


def gateway_events(log_text: str) -> dict[str, int]:
    """Counts of the gateway's log events that explain a missed target (JSON log lines)."""
    counts: Counter[str] = Counter()
    for line in log_text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line).get("event")
                if event in WATCHED_EVENTS:
                    counts[event] += 1
    return dict(counts)


def run_conversations(url: str, count: int, latency_s: float, tag: str) -> list[dict[str, Any]]:
    """`count` users, each sending one message through its own simulator, all at once."""
    start = threading.Barrier(count)

    def conversation(i: int) -> dict[str, Any]:
        sim = WeChatSimulator(url, ACCOUNT, cut_s=CUT_S)
        fields = text_message(f"latency:{latency_s:g}:{tag}:{i}", openid=f"oSlow{tag}{i:04d}")
        start.wait()
        began = time.monotonic()
        delivery: Delivery = sim.deliver(fields)
        return {
            "fields": fields,
            "expected": f"答：{fields['Content']}",
            "delivery": delivery,
            "total_s": time.monotonic() - began,
        }

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(conversation, range(count)))


def describe(results: list[dict[str, Any]], fake: FakeAI) -> dict[str, Any]:
    attempts = [len(r["delivery"].attempts) for r in results]
    answered = [r["delivery"].user_sees == r["expected"] for r in results]
    per_attempt = [a.elapsed_s for r in results for a in r["delivery"].attempts]
    totals = sorted(r["total_s"] for r in results)
    return {
        "conversations": len(results),
        "answered": sum(answered),
        "attempts": {str(n): attempts.count(n) for n in sorted(set(attempts))},
        "answered_on_first_attempt": sum(
            ok and n == 1 for ok, n in zip(answered, attempts, strict=True)
        ),
        "answered_on_a_retry": sum(ok and n > 1 for ok, n in zip(answered, attempts, strict=True)),
        "every_attempt_answered_within_cut": all(
            a.verdict == "reply" and a.elapsed_s < CUT_S
            for r in results
            for a in r["delivery"].attempts
        ),
        "max_attempt_s": max(per_attempt),
        "time_to_answer_p50_s": statistics.median(totals),
        "time_to_answer_p99_s": totals[min(len(totals) - 1, int(len(totals) * 0.99))],
        "time_to_answer_max_s": totals[-1],
        # How many messages had the AI called 0, 1, 2 ... times (1 is right).
        "ai_calls_per_message": dict(
            Counter(str(fake.calls_for(dedup_key(r["fields"]))) for r in results)
        ),
        "verdicts": sorted({a.verdict for r in results for a in r["delivery"].attempts}),
    }


def main(argv: list[str] | None = None) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    fake = FakeAI()
    # http.server listens with a backlog of 5: 200 simultaneous AI requests would see
    # dropped SYNs and a 1 s retransmit each. Listening again only raises the backlog.
    fake._server.socket.listen(512)
    fake.latency_for = latency_of
    fake.start()
    redis = redis_if_available(log_dir)
    env = {**ACCOUNT.env(), "AI_API_URL": fake.url}
    if redis:
        env["REDIS_URL"] = redis.extra["url"]
    store = "redis" if redis else "local (no redis-server: retries may land on another worker)"
    gateway = start_gateway(log_dir, env, workers=WORKERS, name="gateway-slow")
    url = gateway.extra["url"] + "/wechat"
    sys.stdout.write(
        f"slow replies: one gateway, Gunicorn {WORKERS} gevent workers, dedup store {store}; "
        f"logs in {log_dir}\n"
    )
    phases: dict[str, Any] = {}
    try:
        idle_kib = process_tree_rss_kib(gateway.popen.pid)
        sys.stdout.write(f"  gateway RSS idle (master + workers): {idle_kib / 1024:.1f} MiB\n")
        for number, (name, count, latency_s) in enumerate(PHASES):
            log_offset = len(gateway.log())
            with MemorySampler(gateway.popen.pid) as memory:
                results = run_conversations(url, count, latency_s, f"p{number}")
            figures = describe(results, fake)
            events = gateway_events(gateway.log()[log_offset:])
            figures.update(latency_s=latency_s, peak_rss_kib=memory.peak_kib, events=events)
            phases[name] = figures
            sys.stdout.write(
                f"  {name:<26} {count:4d} users: answered {figures['answered']}/{count}"
                f" (first attempt {figures['answered_on_first_attempt']}, on a retry "
                f"{figures['answered_on_a_retry']}); time to answer p50 "
                f"{figures['time_to_answer_p50_s']:.2f} s, max "
                f"{figures['time_to_answer_max_s']:.2f} s; longest attempt "
                f"{figures['max_attempt_s']:.2f} s; peak RSS "
                f"{memory.peak_kib / 1024:.1f} MiB\n"
            )
            if events:
                sys.stdout.write(f"    gateway log events: {events}\n")
            sys.stdout.flush()
    finally:
        gateway.stop()
        if redis:
            redis.stop()
        fake.stop()

    three, eight = phases["answers in 3 s"], phases["answers in 8 s"]
    targets = [
        {
            "target": "200 users, 3 s answers: every callback answered within 5 s, first attempt",
            "ok": three["answered_on_first_attempt"] == three["conversations"]
            and three["every_attempt_answered_within_cut"],
            "value": f"{three['answered_on_first_attempt']}/{three['conversations']}, "
            f"longest {three['max_attempt_s']:.2f} s",
        },
        {
            "target": "50 users, 8 s answers: every answer arrives on a retry, AI called once each",
            "ok": eight["answered_on_a_retry"] == eight["conversations"]
            and set(eight["ai_calls_per_message"]) == {"1"},
            "value": f"{eight['answered_on_a_retry']}/{eight['conversations']}, messages by "
            f"AI calls {eight['ai_calls_per_message']}",
        },
    ]
    baseline_peak = phases["baseline: instant answers"]["peak_rss_kib"]
    sys.stdout.write(
        f"  memory: idle {idle_kib / 1024:.1f} MiB, peak {baseline_peak / 1024:.1f} MiB with "
        f"200 instant answers, {three['peak_rss_kib'] / 1024:.1f} MiB with 200 held for 3 s, "
        f"{eight['peak_rss_kib'] / 1024:.1f} MiB with 50 across retries\n"
    )
    for t in targets:
        sys.stdout.write(f"  {verdict(t['ok'])}  {t['target']}: {t['value']}\n")
    path = write_result(
        "slow_reply",
        {
            "machine": machine(),
            "settings": {"workers": WORKERS, "worker_class": "gevent", "store": store},
            "idle_rss_kib": idle_kib,
            "phases": phases,
            "targets": targets,
        },
    )
    sys.stdout.write(f"  results: {path.relative_to(REPO)}\n")
    return 0 if all(t["ok"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
