"""infra/nginx/run-nginx.sh: reloads nginx when the gateway's addresses change, and only then.

The script runs with stand-ins for `nginx` and `getent` on PATH, so the test drives the
replica set and reads which commands the script issued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, wait_until

SCRIPT = REPO_ROOT / "infra" / "nginx" / "run-nginx.sh"


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Like nginx, the foreground master installs its own QUIT handler (a shell could not:
    # a background job of a script starts with QUIT ignored) and runs until told to quit.
    (bin_dir / "nginx").write_text(
        f"#!{sys.executable}\n"
        "import signal, sys, time\n"
        f"open({str(tmp_path / 'nginx.calls')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1] == '-g':\n"
        "    signal.signal(signal.SIGQUIT, lambda *a: sys.exit(0))\n"
        "    while True: time.sleep(0.05)\n"
    )
    (bin_dir / "getent").write_text(
        f"#!/bin/sh\necho x >> {tmp_path}/getent.calls\ncat {tmp_path}/addresses\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "nginx.calls"
    return path.read_text().splitlines() if path.exists() else []


def lookups(tmp_path: Path) -> int:
    path = tmp_path / "getent.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def set_replicas(tmp_path: Path, *addresses: str) -> None:
    lines = [f"{a}      STREAM wechat-gateway" for a in addresses]
    (tmp_path / "addresses").write_text("\n".join(lines) + "\n")


def test_reloads_when_replicas_change_and_stops_cleanly(tmp_path: Path, fake_bin: Path):
    set_replicas(tmp_path, "172.18.0.5")
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "WATCH_INTERVAL_S": "1"}
    proc = subprocess.Popen(["/bin/sh", str(SCRIPT)], env=env, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: calls(tmp_path) == ["-g daemon off;"], 5, "nginx to start")
        set_replicas(tmp_path, "172.18.0.5", "172.18.0.5", "172.18.0.9")  # scaled to 2
        wait_until(lambda: "-s reload" in calls(tmp_path), 5, "a reload for the new replica")
        assert calls(tmp_path).count("-s reload") == 1
        set_replicas(tmp_path, "172.18.0.9", "172.18.0.5")  # same set, other order
        looked = lookups(tmp_path)
        wait_until(lambda: lookups(tmp_path) >= looked + 2, 5, "two more DNS look-ups")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert calls(tmp_path).count("-s reload") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert b"reloading" in stderr
