"""Gateway throughput: safe-mode text callbacks against a bare Flask endpoint, in one run.

Every server runs under the gateway's own gunicorn.conf.py (same worker class, workers,
timeouts, keep-alive); wrk drives the load from a second process over 127.0.0.1, cycling
through callbacks signed and encrypted with wechatpy (tests/support/wechat.py) right before
each case, so their timestamps sit well inside the gateway's 300 s skew window.

Cases, all servers up at once, measured in interleaved rounds (each case: a warm-up, then a
fixed-duration wrk run; the bare baseline first in every round, so each ratio compares
figures taken close together on a machine that other work may share):
- bare: Flask answering a constant (the baseline; every ratio is against it);
- gateway fresh: every callback a new MsgId, so each one is verified, decrypted, claimed in
  the dedup store and sent to the instant AI responder (bench/responder.py), and the
  answer is encrypted and signed. Target: at least 0.4 of the baseline;
- gateway duplicate: a small set of callbacks already answered, so every request is a
  dedup hit answered from the stored reply without the AI. Target: at least 0.7;
- wechatpy: a minimal handler on wechatpy forwarding to the same responder, for
  comparison with the fresh case (ours should be clearly faster).
Reported per case: the median over the rounds of req/s, p50, p99 and the ratio to bare
(the targets), and the server's CPU time per request from /proc (steadier than req/s when
other work shares the cores; "CPU ratio" is bare Flask's CPU per request over the case's).
The gateway cases run with the in-process store and, when redis-server is installed, again
with Redis (REDIS_URL). The responder counts its calls, which proves the fresh case called
the AI once per callback and the duplicate case not at all.

The 0.4 and 0.7 targets are held against the gateway as the issue's benchmark describes it,
which names no Redis: the gateway as `make run` starts it, REDIS_URL unset, its dedup store
in-process. The Redis figures are printed beside them (INFO) with what each request's
Redis round trips cost, and do not set the exit status: on these two cores one round trip
through redis-py costs the gateway more CPU than bare Flask's whole request.

Run: .venv/bin/python -m bench gateway   (about four minutes; results in bench/results/)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    have,
    machine,
    process_tree_cpu_s,
    redis_if_available,
    start_flask_app,
    start_responder,
    verdict,
    write_result,
)
from bench.responder import REPLY_TEXT
from tests.support.processes import Process, start_gateway
from tests.support.wechat import Account, WeChatSimulator, text_message

# Five: on a shared VM one case's round can lose a quarter of its rate to a neighbour;
# the median of five rounds keeps a verdict from flipping on one such round.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROUND_S = int(os.environ.get("BENCH_ROUND_S", "4"))  # measured seconds per case and round
WARMUP_S = int(os.environ.get("BENCH_WARMUP_S", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
WRK_THREADS = 1  # one load thread saturates these servers and leaves them the other core
WORKERS = 2  # gunicorn.conf.py's default, what .env.example and compose run
DUPLICATE_SET = 200  # well under WECHAT_DEDUP_MAX (500), so the local store keeps them all
FRESH_TARGET = 0.4
DUPLICATE_TARGET = 0.7
CLEARLY_FASTER = 1.2  # "clearly faster" than wechatpy: at least this many times its req/s
TARGET_STORE = "local"  # the gateway as `make run` starts it: REDIS_URL unset
LUA = REPO / "bench" / "wrk_cycle.lua"
ACCOUNT = Account()


# -- load --------------------------------------------------------------------------------
def write_callbacks(path: Path, count: int, tag: str) -> Path:
    """`count` distinct safe-mode text callbacks, one a line: path?query TAB body."""
    sim = WeChatSimulator("http://127.0.0.1/wechat", ACCOUNT)
    base = time.time_ns() // 1000
    with path.open("w") as out:
        for i in range(count):
            fields = text_message(
                f"基准测试 {tag} 第{i}条：今天天气怎么样？",
                openid=f"oBench{tag}{i % 1000:04d}",
                msg_id=str(base + i),
            )
            params, body = sim.build_request(fields)
            out.write(f"/wechat?{urllib.parse.urlencode(params)}\t{body.decode()}\n")
    return path


def wrk(url: str, callbacks: Path, seconds: int) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t",
        str(WRK_THREADS),
        "-c",
        str(CONNECTIONS),
        "-d",
        f"{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url + "/wechat",
        "--",
        str(callbacks),
        str(WRK_THREADS),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            stats = json.loads(line.removeprefix("WRK_JSON "))
            stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
            stats["errors"] = sum(v for k, v in stats.items() if k.startswith("errors_"))
            return stats
    raise RuntimeError(f"wrk printed no WRK_JSON line:\n{done.stdout}\n{done.stderr}")


def ai_calls(responder_url: str) -> int:
    with urllib.request.urlopen(responder_url + "/stats", timeout=5) as resp:
        return json.load(resp)["replies"]


def metric_total(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


# -- cases -------------------------------------------------------------------------------
@dataclass
class Case:
    """One column of the table: a server, and what kind of callbacks it gets."""

    name: str
    store: str
    url: str
    kind: str  # constant, fresh, duplicate
    pid: int  # the Gunicorn master: its process tree's CPU time is the server's cost
    rounds: list[dict[str, Any]] = field(default_factory=list)


class Run:
    """One benchmark run: the responder, Redis when installed, the servers, the cases."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.cases: list[Case] = []
        responder = self._keep(start_responder(log_dir))
        self.responder_url = responder.extra["url"]
        self.responder_pid = responder.popen.pid
        self.redis = redis_if_available(log_dir)
        if self.redis:
            self._keep(self.redis)
        self.env = {**ACCOUNT.env(), "AI_API_URL": self.responder_url}

    def _keep(self, proc: Process) -> Process:
        self.processes.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def start_servers(self) -> None:
        """Every server at once (idle ones cost nothing), each checked with a real callback."""
        bare = self._keep(
            start_flask_app(self.log_dir, "bench.baseline_apps:bare_app", self.env, WORKERS)
        )
        check_reply(bare.extra["url"], None)
        self.cases.append(
            Case("bare Flask (constant)", "-", bare.extra["url"], "constant", bare.popen.pid)
        )
        for store in ("local", "redis") if self.redis else ("local",):
            env = dict(self.env)
            if self.redis:
                env["REDIS_URL"] = self.redis.extra["url"] if store == "redis" else ""
            gateway = self._keep(
                start_gateway(self.log_dir, env, workers=WORKERS, name=f"gateway-{store}")
            )
            url = gateway.extra["url"]
            check_reply(url, REPLY_TEXT)
            pid = gateway.popen.pid
            self.cases.append(Case("gateway fresh", store, url, "fresh", pid))
            self.cases.append(Case("gateway duplicate", store, url, "duplicate", pid))
        wechatpy = self._keep(
            start_flask_app(self.log_dir, "bench.baseline_apps:wechatpy_app", self.env, WORKERS)
        )
        check_reply(wechatpy.extra["url"], REPLY_TEXT)
        self.cases.append(
            Case("wechatpy handler", "-", wechatpy.extra["url"], "fresh", wechatpy.popen.pid)
        )

    def round(self, number: int) -> None:
        """Each case once, the bare baseline first: a ratio compares figures taken minutes
        apart at most, so load from other processes on a shared machine hits both alike."""
        bare_rps = bare_cpu = 0.0
        for case in self.cases:
            tag = f"r{number}{len(case.rounds)}{case.kind[0]}{case.store[0]}"
            if case.kind == "constant":
                warm = measured = write_callbacks(self.log_dir / "bare.txt", 2000, tag)
            elif case.kind == "fresh":
                # Distinct callbacks for a gateway up to 1.5 times faster than bare Flask:
                # a run that still ran out reports wraps > 0 and is marked invalid.
                warm = write_callbacks(
                    self.log_dir / f"{tag}-warm.txt", fresh_count(WARMUP_S, bare_rps), tag + "w"
                )
                measured = write_callbacks(
                    self.log_dir / f"{tag}.txt", fresh_count(ROUND_S, bare_rps), tag
                )
            else:
                # The warm-up answers each callback and stores the reply (in every worker's
                # store, for the in-process one); the measured run is all dedup hits.
                warm = measured = write_callbacks(self.log_dir / f"{tag}.txt", DUPLICATE_SET, tag)
            wrk(case.url, warm, WARMUP_S)
            fallbacks_before = fallback_replies(case)
            calls_before = ai_calls(self.responder_url)
            cpu_before = process_tree_cpu_s(case.pid), process_tree_cpu_s(self.responder_pid)
            stats = wrk(case.url, measured, ROUND_S)
            cpu_after = process_tree_cpu_s(case.pid), process_tree_cpu_s(self.responder_pid)
            stats["ai_calls"] = ai_calls(self.responder_url) - calls_before
            requests = max(stats["requests"], 1)
            stats["server_cpu_ms_per_request"] = 1000 * (cpu_after[0] - cpu_before[0]) / requests
            stats["responder_cpu_ms_per_request"] = 1000 * (cpu_after[1] - cpu_before[1]) / requests
            stats["ai_calls_per_request"] = stats["ai_calls"] / max(stats["requests"], 1)
            stats["fallback_replies"] = fallback_replies(case) - fallbacks_before
            if case.kind == "constant":
                bare_rps, bare_cpu = stats["rps"], stats["server_cpu_ms_per_request"]
            stats["ratio_to_bare"] = stats["rps"] / bare_rps
            stats["cpu_ratio_to_bare"] = bare_cpu / stats["server_cpu_ms_per_request"]
            case.rounds.append(stats)
            sys.stdout.write(f"  round {number}  " + round_line(case, stats) + "\n")
            sys.stdout.flush()


def round_line(case: Case, r: dict[str, Any]) -> str:
    line = (
        f"{case.name:<22} {case.store:<6}{r['rps']:7.0f} req/s"
        f"  p50 {r['p50_us'] / 1000:6.1f} ms  p99 {r['p99_us'] / 1000:6.1f} ms"
        f"  ratio {r['ratio_to_bare']:.2f}  CPU {r['server_cpu_ms_per_request']:.2f} ms/req"
        f"  AI calls/req {r['ai_calls_per_request']:.2f}"
    )
    if r["errors"]:
        line += f"  errors {r['errors']}"
    if case.kind == "fresh" and r["wraps"]:
        line += f"  WRAPPED {r['wraps']}"
    return line


def check_reply(url: str, expect: str | None) -> None:
    """One real callback through the simulator: the reply decrypts and carries `expect`."""
    attempt = WeChatSimulator(url + "/wechat", ACCOUNT).post(text_message("你好"))
    seen = attempt.reply.get("Content") if attempt.reply else attempt.verdict
    if seen != (expect or "success"):
        raise RuntimeError(f"{url} answered {attempt.verdict} {seen!r}, not {expect!r}")


def fresh_count(seconds: int, bare_rps: float) -> int:
    return math.ceil(1.5 * bare_rps * seconds) + 500


def fallback_replies(case: Case) -> float:
    """The gateway's fallback answers so far: any would mean the AI hop failed under load."""
    if not case.name.startswith("gateway"):
        return 0.0
    return metric_total(case.url, "wechat_fallback_replies_total")


def aggregate(case: Case) -> dict[str, Any]:
    """Medians over the rounds (each round's ratio is against that round's bare run)."""
    rounds = case.rounds
    valid = all(
        r["errors"] == 0
        and r["fallback_replies"] == 0
        and not (case.kind == "fresh" and r["wraps"])
        for r in rounds
    )
    return {
        "case": case.name,
        "store": case.store,
        "kind": case.kind,
        "rps": statistics.median(r["rps"] for r in rounds),
        "p50_ms": statistics.median(r["p50_us"] for r in rounds) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in rounds) / 1000,
        "ratio_to_bare": statistics.median(r["ratio_to_bare"] for r in rounds),
        "server_cpu_ms_per_request": statistics.median(
            r["server_cpu_ms_per_request"] for r in rounds
        ),
        "responder_cpu_ms_per_request": statistics.median(
            r["responder_cpu_ms_per_request"] for r in rounds
        ),
        "cpu_ratio_to_bare": statistics.median(r["cpu_ratio_to_bare"] for r in rounds),
        "ai_calls_per_request": sum(r["ai_calls"] for r in rounds)
        / max(sum(r["requests"] for r in rounds), 1),
        "valid": valid,
        "rounds": rounds,
    }


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table and one PASS/FAIL line per target."""
    out = sys.stdout
    out.write(
        f"\n  {'median of ' + str(ROUNDS) + ' rounds':<24}{'store':<7}{'req/s':>7}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}{'CPU ms/req':>12}{'CPU ratio':>11}"
        f"{'AI calls/req':>14}\n"
    )
    for r in results:
        out.write(
            f"  {r['case']:<24}{r['store']:<7}{r['rps']:7.0f}{r['p50_ms']:9.1f}"
            f"{r['p99_ms']:9.1f}{r['ratio_to_bare']:7.2f}{r['server_cpu_ms_per_request']:12.2f}"
            f"{r['cpu_ratio_to_bare']:11.2f}{r['ai_calls_per_request']:14.2f}"
            + ("" if r["valid"] else "  INVALID (errors, fallbacks or wraps)")
            + "\n"
        )
    by = {(r["case"], r["store"]): r for r in results}
    wechatpy = by[("wechatpy handler", "-")]
    targets = []
    for store in sorted({r["store"] for r in results} - {"-"}):
        fresh, dup = by[("gateway fresh", store)], by[("gateway duplicate", store)]
        for r, target in ((fresh, FRESH_TARGET), (dup, DUPLICATE_TARGET)):
            if store != TARGET_STORE:
                local = by[(r["case"], TARGET_STORE)]
                extra_ms = r["server_cpu_ms_per_request"] - local["server_cpu_ms_per_request"]
                out.write(
                    f"  INFO  {r['case']} ({store} store): {r['ratio_to_bare']:.3f} of bare "
                    f"Flask; Redis adds {extra_ms:.2f} ms of gateway CPU per request "
                    f"(no target: the issue's benchmark names no Redis)\n"
                )
                # No ratio to reach, but errors or fallbacks under load are still failures.
                targets.append(
                    {
                        "target": f"{r['case']} ({store} store) without errors or fallbacks",
                        "value": float(r["valid"]),
                        "ok": r["valid"],
                    }
                )
                continue
            ok = r["valid"] and r["ratio_to_bare"] >= target
            targets.append(
                {
                    "target": f"{r['case']} ({store} store) >= {target} of bare Flask",
                    "value": r["ratio_to_bare"],
                    "ok": ok,
                }
            )
        speedup = fresh["ratio_to_bare"] / wechatpy["ratio_to_bare"]
        targets.append(
            {
                "target": f"gateway fresh ({store} store) >= {CLEARLY_FASTER}x wechatpy handler",
                "value": speedup,
                "ok": speedup >= CLEARLY_FASTER,
            }
        )
    for t in targets:
        out.write(f"  {verdict(t['ok'])}  {t['target']}: {t['value']:.3f}\n")
    return targets


def main(argv: list[str] | None = None) -> int:
    if not have("wrk"):
        sys.stdout.write("gateway throughput: SKIP, wrk is not installed (apt-get install wrk)\n")
        return 0
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    run = Run(log_dir)
    stores = "in-process and Redis" if run.redis else "in-process only (no redis-server)"
    sys.stdout.write(
        f"gateway throughput: Gunicorn {WORKERS} gevent workers per server; wrk {WRK_THREADS} "
        f"thread x {CONNECTIONS} connections; {ROUNDS} rounds of {WARMUP_S} s warm-up + "
        f"{ROUND_S} s per case; dedup store {stores}; logs in {log_dir}\n"
    )
    started = time.time()
    try:
        run.start_servers()
        for number in range(1, ROUNDS + 1):
            run.round(number)
    finally:
        run.stop()
    results = [aggregate(case) for case in run.cases]
    targets = summarize(results)
    path = write_result(
        "gateway_throughput",
        {
            "machine": machine(),
            "settings": {
                "workers": WORKERS,
                "worker_class": "gevent (services/wechat-gateway/gunicorn.conf.py)",
                "wrk_threads": WRK_THREADS,
                "connections": CONNECTIONS,
                "rounds": ROUNDS,
                "warmup_s": WARMUP_S,
                "round_s": ROUND_S,
                "stores": ["local", "redis"] if run.redis else ["local"],
            },
            "elapsed_s": time.time() - started,
            "results": results,
            "targets": targets,
        },
    )
    sys.stdout.write(f"  results: {path.relative_to(REPO)}\n")
    return 0 if all(t["ok"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
