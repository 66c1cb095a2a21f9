"""Fixtures shared by every test package: a fake AI API and a real redis-server."""

from __future__ import annotations

import pytest

from tests.support.fake_ai import FakeAI
from tests.support.processes import start_redis


@pytest.fixture
def fake_ai():
    """A stand-in AI API on 127.0.0.1 (see tests/support/fake_ai.py)."""
    ai = FakeAI().start()
    yield ai
    ai.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A throw-away redis-server on a free loopback port (skips without it, fails in CI)."""
    proc = start_redis(tmp_path)
    yield proc
    proc.stop()
