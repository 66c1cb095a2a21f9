"""Is a gateway change cheaper? The working tree against a git revision, run side by side.

`make bench` answers "does the gateway meet its targets"; this answers the question asked
while working on them. On this shared 2-core VM a gateway's CPU per request moves by 10-15%
from one run to the next, more than most changes save, so two figures taken minutes apart
say nothing. Here both gateways run at once (the revision's code, unpacked with
`git archive`, and the working tree's) and take the same kind of callbacks in blocks of
four runs, A B B A; each block gives one ratio, and an exact randomisation test over the
blocks says whether the change is more than noise.

Measured per run: the gateway's CPU time per request from /proc (what a change moves;
req/s also counts the time a worker waited for a core), and req/s. One Gunicorn worker by
default: it adds no scheduling between workers to the noise. Eight blocks of 3 s runs
take about two minutes and tell a change of 10% from noise (a deliberate 9% slowdown of
the duplicate path gave p = 0.016); smaller changes need more blocks.

Run: .venv/bin/python -m bench.compare REV [--case duplicate|fresh] [--store local|redis]
     make bench-compare REV=HEAD~1 CASE=fresh
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    GATEWAY_DIR,
    REPO,
    have,
    process_tree_cpu_s,
    start_responder,
)
from bench.gateway_throughput import ACCOUNT, DUPLICATE_SET, fresh_count, write_callbacks, wrk
from tests.support.processes import Process, start_gateway, start_redis

SIGNIFICANCE = 0.05
_FRESH_RATE_GUESS = 4000  # req/s: sizes the first fresh round's callbacks generously


@dataclass
class Side:
    """One gateway of the comparison: its code, and its figures (two runs per block)."""

    label: str
    gateway_dir: Path
    cpu_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def extract_gateway(rev: str, into: Path) -> Path:
    """services/wechat-gateway as committed at `rev`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "services/wechat-gateway"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "services" / "wechat-gateway"


def block_ratios(base: list[float], changed: list[float]) -> list[float]:
    """One ratio per A B B A block: the changed side's two runs over the base side's two.

    The machine drifts from run to run (measured: the later run of two back-to-back ones
    often cost a few per cent more). A B B A puts both sides' runs symmetrically around
    the block's middle, so a steady drift costs them alike and cancels in the ratio.
    """
    pairs = len(base) // 2
    return [
        (changed[2 * i] + changed[2 * i + 1]) / (base[2 * i] + base[2 * i + 1])
        for i in range(pairs)
    ]


def sign_flip_p(log_ratios: list[float]) -> float:
    """Exact two-sided randomisation test of "no change" on the blocks' log ratios.

    Under no change each block's ratio is as likely above 1 as below: the p value is the
    share of the 2^n sign assignments whose mean is at least as far from 0 as the observed.
    """
    n = len(log_ratios)
    if n == 0:
        return 1.0
    observed = abs(sum(log_ratios)) - 1e-12
    extreme = sum(
        1
        for signs in itertools.product((1, -1), repeat=n)
        if abs(sum(s * x for s, x in zip(signs, log_ratios, strict=True))) >= observed
    )
    return extreme / 2**n


def compare(base: list[float], changed: list[float]) -> dict[str, Any]:
    """The blocks' CPU-per-request ratios summed up: the change, its p value, a verdict."""
    ratios = block_ratios(base, changed)
    logs = [math.log(r) for r in ratios]
    change = math.exp(statistics.fmean(logs)) - 1 if logs else 0.0
    p = sign_flip_p(logs)
    verdict = "cheaper" if change < 0 else "dearer"
    return {
        "change": change,
        "block_ratios": ratios,
        "p": p,
        "verdict": "within the noise" if p > SIGNIFICANCE else verdict,
    }


def measure(side: Side, server: Process, callbacks: Path, seconds: int, fresh: bool) -> None:
    """One wrk run against `side`; a fresh run that ran out of new callbacks is refused."""
    before = process_tree_cpu_s(server.popen.pid)
    stats = wrk(server.extra["url"], callbacks, seconds)
    used_s = process_tree_cpu_s(server.popen.pid) - before
    if stats["errors"] or (fresh and stats["wraps"]):
        raise RuntimeError(f"{side.label}: errors or reused callbacks in {stats}")
    side.cpu_ms.append(1000 * used_s / max(stats["requests"], 1))
    side.rps.append(stats["rps"])


def run_block(
    number: int,
    sides: tuple[Side, Side],
    start: Callable[[Side], Process],
    case: str,
    seconds: int,
    work: Path,
) -> None:
    """Both gateways started afresh, warmed up, then four runs: base, changed, changed, base.

    A fresh pair of processes per block, started in alternating order: one process can
    run a few per cent cheaper than an identical one for its whole life (measured: the
    same code against itself came out 4% apart, p = 0.008, when the pair was started once).
    """
    base, changed = sides
    servers: dict[str, Process] = {}
    duplicates: dict[str, Path] = {}
    try:
        for side in sides if number % 2 else sides[::-1]:
            servers[side.label] = server = start(side)
            tag = f"b{number}{side.label[:1]}{len(servers)}"
            if case == "duplicate":
                duplicates[side.label] = write_callbacks(
                    work / f"dup-{tag}.txt", DUPLICATE_SET, tag
                )
                wrk(server.extra["url"], duplicates[side.label], 2)
            else:
                warm = write_callbacks(work / f"warm-{tag}.txt", 3000, "w" + tag)
                wrk(server.extra["url"], warm, 2)
        for run, side in enumerate((base, changed, changed, base)):
            if case == "duplicate":
                callbacks = duplicates[side.label]
            else:
                tag = f"f{number}r{run}"
                callbacks = write_callbacks(
                    work / f"{tag}.txt",
                    fresh_count(seconds, max(side.rps, default=_FRESH_RATE_GUESS)),
                    tag,
                )
            measure(side, servers[side.label], callbacks, seconds, fresh=case == "fresh")
            sys.stdout.write(
                f"  block {number:<3}{side.label:<14}{side.rps[-1]:7.0f} req/s"
                f"  CPU {side.cpu_ms[-1]:.3f} ms/req\n"
            )
            sys.stdout.flush()
    finally:
        for server in servers.values():
            server.stop()


def report(base: Side, changed: Side) -> dict[str, Any]:
    result = compare(base.cpu_ms, changed.cpu_ms)
    for side in (base, changed):
        sys.stdout.write(
            f"  {side.label:<14}median {statistics.median(side.rps):7.0f} req/s"
            f"  CPU {statistics.median(side.cpu_ms):.3f} ms/req\n"
        )
    ratios = ", ".join(f"{r:.3f}" for r in result["block_ratios"])
    sys.stdout.write(
        f"  working tree vs {base.label}: CPU per request {result['change']:+.1%}"
        f" (blocks: {ratios}); p = {result['p']:.3f}: {result['verdict']}\n"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rev", help="the git revision to compare the working tree against")
    parser.add_argument("--case", choices=("duplicate", "fresh"), default="duplicate")
    parser.add_argument("--store", choices=("local", "redis"), default="local")
    parser.add_argument(
        "--blocks", type=int, default=8, help="A B B A blocks (default 8: p can reach 0.008)"
    )
    parser.add_argument("--seconds", type=int, default=3, help="per run (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="Gunicorn workers per gateway")
    args = parser.parse_args(argv)
    if not have("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    if args.store == "redis" and not have("redis-server"):
        parser.error("--store redis needs redis-server (apt-get install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    processes: list[Process] = []
    try:
        base_dir = extract_gateway(args.rev, work / "base")
        responder = start_responder(work)
        processes.append(responder)
        env = {**ACCOUNT.env(), "AI_API_URL": responder.extra["url"], "REDIS_URL": ""}
        if args.store == "redis":
            redis = start_redis(work)
            processes.append(redis)
            env["REDIS_URL"] = redis.extra["url"]
        sides = (Side(args.rev, base_dir), Side("working tree", GATEWAY_DIR))

        def start(side: Side) -> Process:
            return start_gateway(work, env, workers=args.workers, gateway_dir=side.gateway_dir)

        sys.stdout.write(
            f"compare: {args.case} callbacks, {args.store} store, {args.workers} worker(s),"
            f" {args.blocks} blocks of 4 runs of {args.seconds} s; logs in {work}\n"
        )
        for number in range(1, args.blocks + 1):
            run_block(number, sides, start, args.case, args.seconds, work)
        report(*sides)
    finally:
        for proc in reversed(processes):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
