"""Start real programs (redis-server, gunicorn, uvicorn, nginx, prometheus) on loopback.

Every helper waits on an event (a port accepting connections, an HTTP answer), never on
a fixed sleep, and every process is stopped by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_DIR = REPO_ROOT / "services" / "wechat-gateway"
AI_API_DIR = REPO_ROOT / "services" / "ai-api"
VENV_BIN = Path(sys.executable).parent


def in_ci() -> bool:
    """CI sets CI=true: there a missing binary is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """A test cannot run here: skipped on a laptop, failed under CI, which must run it."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def require_binary(name: str, install_hint: str = "") -> str:
    """Return the path of `name`; skip the test without it, or fail under CI."""
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path:
        return path
    unavailable(f"{name} is not installed ({install_hint or 'see .ci/run'})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` (a cheap check of an event) until it is true or the timeout expires."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Process:
    """A started program, its log file and how to stop it."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int | None = None
    extra: dict = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int | None = None, timeout_s: float = 10) -> None:
        sig = self.stop_signal if sig is None else sig
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_process(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    ready: Callable[[], bool] | None = None,
    ready_timeout_s: float = 20,
) -> Process:
    """Start `argv` in its own process group; wait until `ready()` (or the port opens)."""
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    proc = Process(name=name, popen=popen, log_path=log_path, port=port)
    check = ready or ((lambda: port_open(port)) if port else None)
    if check is not None:
        try:
            wait_until(lambda: check() or not proc.alive(), ready_timeout_s, f"{name} to start")
        except TimeoutError:
            proc.stop()
            raise
        if not proc.alive():
            raise RuntimeError(f"{name} exited at start-up:\n{proc.log()[-4000:]}")
    return proc


def start_redis(log_dir: Path, port: int | None = None) -> Process:
    """A throw-away redis-server on 127.0.0.1 without persistence."""
    binary = require_binary("redis-server", "apt-get install redis-server")
    port = port or free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(exist_ok=True)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
    ]
    proc = start_process(f"redis-{port}", argv, log_dir, port=port)
    proc.extra["url"] = f"redis://127.0.0.1:{port}/0"
    return proc


def start_gateway(
    log_dir: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    workers: int = 2,
    name: str = "gateway",
    gateway_dir: Path = GATEWAY_DIR,
) -> Process:
    """The gateway under Gunicorn with its production config file, on 127.0.0.1.

    `gateway_dir` is the service's directory: another checkout of it (bench.compare)
    runs its own code, since Gunicorn imports the app from its working directory.
    """
    port = port or free_port()
    full_env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GUNICORN_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"{name}-{port}-metrics"),
        "LOG_FORMAT": "json",
        **env,
    }
    argv = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wechat_gateway.wsgi:app"]
    proc = start_process(
        f"{name}-{port}",
        argv,
        log_dir,
        env=full_env,
        cwd=gateway_dir,
        port=port,
        ready=lambda: (
            http_ok(f"http://127.0.0.1:{port}/health")
            or _health_answers(f"http://127.0.0.1:{port}/health")
        ),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    # Gunicorn's quick shutdown: a graceful one waits for the tests' idle keep-alive connections.
    proc.stop_signal = signal.SIGINT
    return proc


def _health_answers(url: str) -> bool:
    """A degraded /health (503) still means the server is up."""
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def start_ai_api(
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    workers: int = 1,
) -> Process:
    """The AI API under Uvicorn, on 127.0.0.1."""
    port = port or free_port()
    argv = [
        str(VENV_BIN / "uvicorn"),
        "celestial_nexus.api:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = start_process(
        f"ai-api-{port}",
        argv,
        log_dir,
        env=dict(env or {}),
        cwd=AI_API_DIR,
        port=port,
        ready=lambda: _health_answers(f"http://127.0.0.1:{port}/health"),
        ready_timeout_s=60,
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    return proc


NGINX_CONF = REPO_ROOT / "infra" / "nginx" / "conf.d" / "celestial-nexus.conf"


def run_script(
    name: str, *args: str, env: Mapping[str, str], timeout_s: float
) -> subprocess.CompletedProcess:
    """`scripts/<name>` run as an operator runs it, from the repository; output captured."""
    return subprocess.run(
        [sys.executable, f"scripts/{name}", *args],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def make_self_signed_cert(directory: Path) -> Path:
    """fullchain.pem + privkey.pem for localhost and 127.0.0.1 (what `make certs` makes)."""
    openssl = require_binary("openssl", "apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(directory / "privkey.pem"),
            "-out",
            str(directory / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory / "fullchain.pem"


def render_nginx_conf(
    dest: Path,
    *,
    gateway_addr: str,
    http_port: int,
    https_port: int,
    status_port: int,
    cert_dir: Path,
    listen_host: str = "127.0.0.1",
) -> Path:
    """A runnable copy of infra/nginx for processes on loopback; returns its nginx.conf.

    The server blocks are the production file with exactly these swaps, each required to
    occur (so the copy cannot silently drift): listen ports, the certificate directory, the
    log and ACME paths, and the gateway address (127.0.0.1 instead of Docker's DNS name).
    A small main file supplies what the nginx image's own nginx.conf would.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "acme").mkdir(exist_ok=True)
    text = NGINX_CONF.read_text()
    swaps = [
        ("listen 80 default_server;", f"listen {listen_host}:{http_port} default_server;"),
        (
            "listen 443 ssl http2 default_server;",
            f"listen {listen_host}:{https_port} ssl http2 default_server;",
        ),
        ("listen 8080;", f"listen {listen_host}:{status_port};"),
        ("/etc/nginx/certs/", f"{cert_dir}/"),
        ("/var/log/nginx/access.log", f"{dest}/access.log"),
        ("root /var/www/acme;", f"root {dest}/acme;"),
        ("server wechat-gateway:9090 ", f"server {gateway_addr} "),
    ]
    for old, new in swaps:
        if old not in text:
            raise ValueError(f"{NGINX_CONF} no longer contains {old!r}: update render_nginx_conf")
        text = text.replace(old, new)
    (dest / "celestial-nexus.conf").write_text(text)
    # As root, workers would run as `nobody`, which cannot enter pytest's 0700 temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {dest}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = (
        f"{user}daemon off;\nworker_processes 1;\npid {dest}/nginx.pid;\n"
        f"error_log {dest}/error.log info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    default_type application/octet-stream;\n{temp}\n"
        f"    include {dest}/celestial-nexus.conf;\n}}\n"
    )
    (dest / "nginx.conf").write_text(main)
    return dest / "nginx.conf"


def nginx_test(conf: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a rendered config (its prefix and error log inside the copy)."""
    nginx = require_binary("nginx", "apt-get install nginx")
    return subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(conf.parent),
            "-e",
            str(conf.parent / "error.log"),
            "-c",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def start_nginx(conf: Path, log_dir: Path, https_port: int) -> Process:
    """nginx in the foreground on a rendered config; ready when the TLS port accepts."""
    nginx = require_binary("nginx", "apt-get install nginx")
    argv = [nginx, "-p", str(conf.parent), "-e", str(conf.parent / "error.log"), "-c", str(conf)]
    return start_process(f"nginx-{https_port}", argv, log_dir, port=https_port)


def gateway_log_lines(log_text: str) -> list[dict]:
    """The gateway's structured log lines (LOG_FORMAT=json), in log order; Gunicorn's own
    plain-text lines are skipped."""
    lines = []
    for raw in log_text.splitlines():
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict):
            lines.append(doc)
    return lines


def gateway_request_lines(log_text: str, route: str = "/wechat") -> list[dict]:
    """The gateway's request lines for one route, in log order."""
    return [doc for doc in gateway_log_lines(log_text) if doc.get("route") == route]
