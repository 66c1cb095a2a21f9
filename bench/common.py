"""What the benchmarks share: paths, process start-up, memory from /proc, results as JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
GATEWAY_DIR = REPO / "services" / "wechat-gateway"
VENV_BIN = Path(sys.executable).parent
for _path in (str(REPO), str(GATEWAY_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tests.support.processes import (  # noqa: E402
    Process,
    free_port,
    http_ok,
    start_process,
    start_redis,
)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def redis_if_available(log_dir: Path) -> Process | None:
    """A throw-away redis-server, or None when it is not installed (the bench says so)."""
    return start_redis(log_dir) if have("redis-server") else None


def start_responder(log_dir: Path) -> Process:
    """The instant AI API (bench/responder.py) on a free port; its URL in extra["url"]."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process(
        "responder",
        [str(VENV_BIN / "python"), "-m", "bench.responder", str(port)],
        log_dir,
        cwd=REPO,
        port=port,
        ready=lambda: http_ok(url + "/health"),
    )
    proc.extra["url"] = url
    return proc


def start_flask_app(log_dir: Path, app: str, env: dict[str, str], workers: int) -> Process:
    """`app` (module:object) under the gateway's own gunicorn.conf.py: same worker class,
    worker count, timeouts and keep-alive as the gateway."""
    port = free_port()
    full_env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GUNICORN_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"{port}-metrics"),
        "PYTHONPATH": str(REPO),
        **env,
    }
    argv = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", app]
    proc = start_process(
        f"{app.rsplit(':', 1)[1]}-{port}",
        argv,
        log_dir,
        env=full_env,
        cwd=GATEWAY_DIR,
        port=port,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    return proc


def process_tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (Gunicorn master + workers), KiB."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                stack.extend(int(c) for c in (task / "children").read_text().split())
    return total


def process_tree_cpu_s(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and its live descendants, seconds.

    CPU per request is steadier than requests per second on a machine shared with other
    work: it does not count the time a process waited for a core.
    """
    ticks = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                stack.extend(int(c) for c in (task / "children").read_text().split())
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What a reader needs to judge the figures: cores, load when the run started."""
    return {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}


def write_result(name: str, document: dict[str, Any]) -> Path:
    """bench/results/<name>-<UTC time>.json (git-ignored) and <name>-latest.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, ensure_ascii=False, indent=2)
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
