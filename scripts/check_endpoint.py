"""`make check-endpoint`: the gateway's checker, signing with the values the gateway runs with.

Usage: check_endpoint.py URL [checker arguments...]   (ENV_FILE=path in the environment)

Values come from the environment first, then from ENV_FILE when it is set (production:
the host's env file; unreadable stops the check). Without ENV_FILE they come from .env
and then .env.example, exactly as `make run` takes them, and the development values used
are named, so checking a fresh `make run` needs nothing set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.refuse_dev_secrets import example_values  # noqa: E402 - the one dotenv reader
from scripts.run_local import local_environment  # noqa: E402

GATEWAY_DIR = ROOT / "services" / "wechat-gateway"


def checker_environment(env_file: str) -> tuple[dict[str, str], list[str]]:
    """The checker's environment, and the names taken from .env.example."""
    if not env_file:
        return local_environment()
    path = Path(env_file)
    if not (path.is_file() and os.access(path, os.R_OK)):
        raise SystemExit(f"check-endpoint: ENV_FILE={env_file} is not a readable file")
    return {**example_values(path), **os.environ}, []


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    env, from_example = checker_environment(os.environ.get("ENV_FILE", ""))
    if "WECHAT_TOKEN" in from_example:
        sys.stderr.write(
            "check-endpoint: signing with the DEVELOPMENT values of .env.example, as make run "
            "uses them; set ENV_FILE=… (or .env) to check a real deployment\n"
        )
    command = [sys.executable, "-m", "wechat_gateway.checker", *argv]
    return subprocess.call(command, cwd=GATEWAY_DIR, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
