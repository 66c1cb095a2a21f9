"""`make run`, the newcomer's first command: both services come up, and Ctrl-C ends them cleanly.

Ctrl-C is pressed on a real pseudo-terminal, so the terminal's SIGINT reaches every
process of the foreground group at once (scripts/run_local.py, Gunicorn's master and
workers, Uvicorn) and the master's SIGQUIT follows: the exact mix a developer causes.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest

from tests.support.processes import REPO_ROOT, free_port, http_ok, port_open, wait_until

pytestmark = pytest.mark.integration
RUN_LOCAL = REPO_ROOT / "scripts" / "run_local.py"
CTRL_C = b"\x03"


class Terminal:
    """run_local.py as the foreground job of its own pseudo-terminal."""

    def __init__(self, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once, nothing else from pytest's process
            os.chdir(REPO_ROOT)
            os.execve(sys.executable, [sys.executable, str(RUN_LOCAL)], env)
        self.output = bytearray()
        self.exit_code: int | None = None

    def read_for(self, seconds: float) -> bool:
        """Collect output for `seconds`; False once every process has let the terminal go."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: nothing holds the terminal any more
                    return False
                if not chunk:
                    return False
                self.output.extend(chunk)
        return True

    def still_running(self) -> bool:
        """True while run_local.py runs; fails the test at once if it ended early."""
        assert self.read_for(0.05), f"make run ended early:\n{self.text()}"
        return True

    def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read_for(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                for _ in range(20):  # what its last words left in the terminal
                    if not self.read_for(0.1):
                        break
                return self.exit_code
        raise TimeoutError(f"run_local.py still running after {timeout_s}s:\n{self.text()}")

    def close(self) -> None:
        if self.exit_code is None:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def run_env(gateway_port: int, ai_port: int, **extra: str) -> dict[str, str]:
    """A newcomer's environment: nothing of ours set but the ports (and `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "AI_API", "LLM_"))}
    env.update(PORT=str(gateway_port), AI_API_PORT=str(ai_port), REDIS_URL="", **extra)
    return env


def test_make_run_serves_both_services_and_ctrl_c_stops_them_cleanly(ports):
    gateway_port, ai_port = ports
    terminal = Terminal(run_env(gateway_port, ai_port))
    try:
        wait_until(
            lambda: (
                terminal.still_running()
                and http_ok(f"http://127.0.0.1:{ai_port}/health")
                and http_ok(f"http://127.0.0.1:{gateway_port}/health")
            ),
            90,
            "both services of make run to answer /health",
        )
        started = len(terminal.output)
        os.write(terminal.fd, CTRL_C)
        code = terminal.wait_exit(30)
    finally:
        terminal.close()
    after_ctrl_c = terminal.text()[started:]
    assert "DEVELOPMENT defaults" in terminal.text()[:started]
    assert code == 0, after_ctrl_c
    assert "Traceback" not in after_ctrl_c
    assert "Shutting down: Master" in after_ctrl_c
    assert not port_open(gateway_port) and not port_open(ai_port)


def test_a_service_that_cannot_start_stops_make_run_with_its_exit_code(ports):
    gateway_port, ai_port = ports
    terminal = Terminal(run_env(gateway_port, ai_port, WECHAT_ENCODING_AES_KEY="too-short"))
    try:
        code = terminal.wait_exit(60)
    finally:
        terminal.close()
    assert code == 2, terminal.text()
    assert "configuration error: WECHAT_ENCODING_AES_KEY" in terminal.text()
    assert not port_open(ai_port)
