"""`make run`: the gateway (Gunicorn) and the AI API (Uvicorn) as local processes.

Variables come from the environment first, then `.env`, then the development values of
`.env.example`, which the services announce loudly. Both bind 127.0.0.1 by default.
Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.refuse_dev_secrets import example_values  # noqa: E402 - the one dotenv reader

BIN = Path(sys.executable).parent


def local_environment() -> tuple[dict[str, str], list[str]]:
    """The environment for both services, and the names taken from .env.example."""
    defaults = example_values(ROOT / ".env.example")
    dotenv = example_values(ROOT / ".env")
    env = dict(os.environ)
    from_example = []
    for name, value in {**defaults, **dotenv}.items():
        if name not in env:
            env[name] = value
            if name not in dotenv:
                from_example.append(name)
    env.setdefault("HOST", "127.0.0.1")
    env.setdefault("AI_API_PORT", "8000")
    # The gateway asks the AI API this run starts, on whatever AI_API_PORT says, unless a
    # URL of one's own is given: .env copied from .env.example holds the default one.
    if "AI_API_URL" not in os.environ and dotenv.get("AI_API_URL") in (
        None,
        defaults.get("AI_API_URL"),
    ):
        env["AI_API_URL"] = f"http://127.0.0.1:{env['AI_API_PORT']}"
    return env, from_example


def main() -> int:
    env, from_example = local_environment()
    if from_example:
        bar = "=" * 78
        sys.stderr.write(
            f"{bar}\n make run: using DEVELOPMENT defaults from .env.example for "
            f"{len(from_example)} variables\n (WECHAT_TOKEN, WECHAT_ENCODING_AES_KEY, ...). "
            "Never expose these values to WeChat:\n set your own in .env or the environment.\n"
            f"{bar}\n"
        )
    host, port, ai_port = env["HOST"], env.get("PORT", "9090"), env["AI_API_PORT"]
    processes = []
    ai_dir = ROOT / "services" / "ai-api"
    if (ai_dir / "celestial_nexus" / "api.py").exists():
        processes.append(
            subprocess.Popen(
                [
                    str(BIN / "uvicorn"),
                    "celestial_nexus.api:app",
                    "--host",
                    host,
                    "--port",
                    ai_port,
                    "--no-access-log",  # as in the image: the AI API logs each request itself
                ],
                cwd=ai_dir,
                env=env,
            )
        )
    else:
        sys.stderr.write(
            "make run: no AI API yet; the gateway answers with WECHAT_FALLBACK_REPLY\n"
        )
    processes.append(
        subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wechat_gateway.wsgi:app"],
            cwd=ROOT / "services" / "wechat-gateway",
            env=env,
        )
    )
    sys.stderr.write(
        f"make run: gateway http://{host}:{port}/wechat  (health: /health, metrics: /metrics)\n"
        f"          AI API  http://{host}:{ai_port}/v1/reply  (docs: /docs)\n"
    )
    return _supervise(processes)


def _supervise(processes: list[subprocess.Popen]) -> int:
    """Wait until one process exits, Ctrl-C or SIGTERM; then stop the others.

    Returns the exit code of the process that ended by itself (a configuration error, a
    crash), or 0 when the user stopped the services and each stopped as asked: Uvicorn
    re-raises the signal it was stopped with, so a clean stop can read as "killed".
    """
    asked = False

    def stop(*_: object) -> None:
        nonlocal asked
        asked = True
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    first_out = None
    try:
        while first_out is None and not asked:
            first_out = next((proc for proc in processes if proc.poll() is not None), None)
            if first_out is None:
                try:
                    processes[0].wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
    except KeyboardInterrupt:
        asked = True  # the terminal sent SIGINT to the services too; make sure of it
    stop()
    codes = [proc.wait() for proc in processes]
    if first_out is not None and first_out.returncode not in _STOPPED_AS_ASKED:
        return first_out.returncode
    return next((code for code in codes if code not in _STOPPED_AS_ASKED), 0)


# How a service ends when told to stop: on its own, or by the signal it was sent.
_STOPPED_AS_ASKED = frozenset({0, -signal.SIGINT, -signal.SIGTERM})

if __name__ == "__main__":
    sys.exit(main())
