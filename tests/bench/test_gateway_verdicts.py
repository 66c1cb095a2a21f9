"""bench.gateway_throughput: which figures are held to the issue's targets."""

import pytest

from bench.gateway_throughput import DUPLICATE_TARGET, FRESH_TARGET, summarize


def row(case: str, store: str, ratio: float, cpu_ms: float = 0.3) -> dict:
    return {
        "case": case,
        "store": store,
        "rps": 1000 * ratio,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "ratio_to_bare": ratio,
        "server_cpu_ms_per_request": cpu_ms,
        "cpu_ratio_to_bare": ratio,
        "ai_calls_per_request": 0.0,
        "valid": True,
    }


def results(local_fresh: float, local_dup: float) -> list[dict]:
    return [
        row("bare Flask (constant)", "-", 1.0, 0.24),
        row("gateway fresh", "local", local_fresh, 0.55),
        row("gateway duplicate", "local", local_dup, 0.32),
        row("gateway fresh", "redis", 0.25, 0.95),
        row("gateway duplicate", "redis", 0.46, 0.51),
        row("wechatpy handler", "-", 0.17, 1.4),
    ]


def test_the_targets_hold_the_in_process_store_and_redis_is_information(capsys):
    targets = summarize(results(FRESH_TARGET + 0.05, DUPLICATE_TARGET + 0.05))
    assert all(t["ok"] for t in targets)
    assert not any("redis store) >= 0." in t["target"] for t in targets)
    assert any(t["target"].endswith("(redis store) without errors or fallbacks") for t in targets)
    printed = capsys.readouterr().out
    assert "INFO  gateway duplicate (redis store): 0.460" in printed
    assert "Redis adds 0.19 ms" in printed


@pytest.mark.parametrize(("fresh", "dup"), [(0.39, 0.8), (0.5, 0.69)])
def test_a_local_figure_under_its_target_fails(fresh, dup):
    failed = [t["target"] for t in summarize(results(fresh, dup)) if not t["ok"]]
    assert len(failed) == 1 and "local store" in failed[0]


def test_a_redis_run_with_errors_or_fallbacks_fails():
    rows = results(0.5, 0.8)
    rows[4]["valid"] = False  # gateway duplicate, redis
    failed = [t["target"] for t in summarize(rows) if not t["ok"]]
    assert failed == ["gateway duplicate (redis store) without errors or fallbacks"]
