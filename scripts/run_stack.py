"""`make stack`: the deployable stack as processes, from the files compose uses.

Real redis-server, the gateway under Gunicorn with its production gunicorn.conf.py, the AI
API under Uvicorn, and nginx with infra/nginx/conf.d (a loopback copy: ports, paths and the
gateway address swapped, nothing else) and the `make certs` certificate. Everything binds
127.0.0.1. tests/stack/ starts the same stack through `start_stack`.

Ports: STACK_HTTPS_PORT (8443), STACK_HTTP_PORT (8088), STACK_STATUS_PORT (8089).
Configuration: the environment, then .env, then .env.example (as `make run`). Ctrl-C stops.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.processes import (  # noqa: E402 - after the path set-up above
    Process,
    free_port,
    render_nginx_conf,
    start_ai_api,
    start_gateway,
    start_nginx,
    start_redis,
)


@dataclass
class Stack:
    """The running processes, started in dependency order and stopped in reverse."""

    https_port: int
    http_port: int
    status_port: int
    nginx_dir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def wechat_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/wechat"

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()


def start_stack(
    workdir: Path,
    env: Mapping[str, str],
    *,
    cert_dir: Path,
    https_port: int | None = None,
    http_port: int | None = None,
    status_port: int | None = None,
    gateway_workers: int = 2,
) -> Stack:
    """Start redis, the AI API, the gateway and nginx; on any failure stop what started."""
    stack = Stack(
        https_port=https_port or free_port(),
        http_port=http_port or free_port(),
        status_port=status_port or free_port(),
        nginx_dir=workdir / "nginx",
    )
    try:
        redis = stack.processes["redis"] = start_redis(workdir)
        redis_url = redis.extra["url"]
        ai_env = {**env, "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/1"}
        ai_api = stack.processes["ai-api"] = start_ai_api(workdir, ai_env)
        gateway_env = {
            **env,
            "REDIS_URL": redis_url,
            "AI_API_URL": ai_api.extra["url"],
            "LOG_FORMAT": "json",
        }
        gateway = stack.processes["gateway"] = start_gateway(
            workdir, gateway_env, workers=gateway_workers
        )
        conf = render_nginx_conf(
            stack.nginx_dir,
            gateway_addr=f"127.0.0.1:{gateway.port}",
            http_port=stack.http_port,
            https_port=stack.https_port,
            status_port=stack.status_port,
            cert_dir=cert_dir,
        )
        stack.processes["nginx"] = start_nginx(conf, workdir, stack.https_port)
    except BaseException:
        stack.stop()
        raise
    return stack


def main() -> int:
    from scripts.run_local import local_environment

    env, from_example = local_environment()
    for name in ("HOST", "PORT", "REDIS_URL", "AI_API_URL"):  # the stack wires these itself
        env.pop(name, None)
    if from_example:
        sys.stderr.write(
            f"make stack: DEVELOPMENT values from .env.example for {len(from_example)} "
            "variables; never expose them to WeChat.\n"
        )
    cert_dir = ROOT / "infra" / "nginx" / "certs"
    if not (cert_dir / "fullchain.pem").exists():
        sys.stderr.write("make stack: no certificate; run `make certs` first\n")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="celestial-stack-"))
    try:
        stack = start_stack(
            workdir,
            env,
            cert_dir=cert_dir,
            https_port=int(os.environ.get("STACK_HTTPS_PORT", "8443")),
            http_port=int(os.environ.get("STACK_HTTP_PORT", "8088")),
            status_port=int(os.environ.get("STACK_STATUS_PORT", "8089")),
        )
    except BaseException as exc:  # includes pytest's Skipped from a missing binary
        sys.stderr.write(f"make stack: could not start: {exc}\nlogs: {workdir}\n")
        return 1
    sys.stderr.write(
        f"make stack: WeChat URL {stack.wechat_url} (self-signed certificate)\n"
        f"            http://127.0.0.1:{stack.http_port}/ redirects to HTTPS\n"
        f"            nginx stub_status http://127.0.0.1:{stack.status_port}/stub_status\n"
        f"            logs in {workdir}; Ctrl-C stops everything\n"
    )
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stopping and all(p.alive() for p in stack.processes.values()):
            time.sleep(0.5)
        dead = [name for name, p in stack.processes.items() if not p.alive()]
        if dead:
            sys.stderr.write(f"make stack: {', '.join(dead)} exited; see {workdir}\n")
    finally:
        stack.stop()
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
