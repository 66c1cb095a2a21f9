"""Gunicorn settings of the gateway (`gunicorn -c gunicorn.conf.py wechat_gateway.wsgi:app`).

gevent workers: a request held across WeChat's 5-second cut, or waiting on a slow AI API,
costs a greenlet, not a thread, so hundreds can wait while new callbacks are served.
Metrics use prometheus-client's multiprocess mode; the directory is prepared here, before
any worker imports prometheus_client, and a dead worker's live gauges are dropped.
A worker told to stop gracefully (SIGTERM: docker stop, a deploy, a HUP reload) first
lets the AI answers still on their way be pushed or parked, within graceful_timeout.
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="wechat-gateway-metrics-"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _multiproc_dir

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '9090')}"
# Without Redis each worker dedups in its own memory: a retry that reaches another worker
# asks the AI again, and an answer parked in one worker is not found by the user's next
# message in the other. One gevent worker serves hundreds of held requests; two need Redis.
_shared_store = bool(os.environ.get("REDIS_URL"))
workers = int(os.environ.get("GUNICORN_WORKERS") or ("2" if _shared_store else "1"))
worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# A held request lives about 5.5 s; 30 s only catches a stuck worker.
timeout = 30
# Held requests, then jobs still running (worker_exit), share this; compose's
# stop_grace_period for the gateway must be longer, or Docker kills first.
graceful_timeout = 10
# Idle keep-alive connections hold up a graceful shutdown until they time out, so keep
# this short; Nginx's upstream keepalive_timeout must stay below it (Nginx closes first).
keepalive = 5
accesslog = None  # the app writes one structured line per request itself
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "wechat-gateway"
# The control socket lives at one fixed path per user: two gateways on a host would collide.
control_socket_disable = True


def on_starting(server):
    """Validate the configuration in the master and start with an empty metrics directory."""
    from wechat_gateway.config import Settings
    from wechat_gateway.errors import ConfigError

    try:
        Settings.from_env(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"wechat-gateway: configuration error: {exc}\n")
        sys.exit(2)
    if server.cfg.workers > 1 and not _shared_store:  # --workers may override GUNICORN_WORKERS
        server.log.warning(
            "GUNICORN_WORKERS=%d without REDIS_URL: each worker dedups on its own, so a "
            "WeChat retry reaching another worker asks the AI again and a parked answer can "
            "be missed; set REDIS_URL, or use one worker",
            server.cfg.workers,
        )
    path = Path(_multiproc_dir)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_fork(server, worker):
    """Wrap the worker's stop signals. Set before the worker installs its signal handlers,
    so Gunicorn registers these as it would its own (with its flags: SA_RESTART kept).

    - SIGTERM (graceful): note when, since worker_exit drains jobs for what is left of
      graceful_timeout, after which the master kills the worker.
    - SIGINT/SIGQUIT (quick): act on the first only. Ctrl-C reaches the workers from the
      terminal and again as the master's SIGQUIT; the gevent worker runs each in its own
      greenlet, and the second one's sys.exit lands in an interpreter already shutting
      down, which prints a "failed with SystemExit" traceback for a clean exit.
    """
    graceful_exit, quick_exit = worker.handle_exit, worker.handle_quit

    def handle_exit(sig, frame):
        worker.stop_asked_at = time.monotonic()
        graceful_exit(sig, frame)

    def handle_quit(sig, frame):
        if getattr(worker, "quick_exit", False):
            return
        worker.quick_exit = True  # worker_exit then drains nothing: Ctrl-C waits for nothing
        quick_exit(sig, frame)

    worker.handle_exit, worker.handle_quit = handle_exit, handle_quit


def worker_exit(server, worker):
    """Give the jobs still running the rest of graceful_timeout to push or park answers."""
    app = getattr(worker, "wsgi", None)
    services = getattr(app, "extensions", {}).get("celestial_nexus")
    if services is None or getattr(worker, "quick_exit", False):
        return
    spent_s = time.monotonic() - getattr(worker, "stop_asked_at", time.monotonic())
    services.delivery.drain(worker.cfg.graceful_timeout - 1 - spent_s)
