"""tests.support.loopback_server: the fake servers take a burst of connections at once."""

import socket
from contextlib import ExitStack
from urllib.parse import urlsplit

from tests.support.loopback_server import LoopbackServer, QuietHandler


def test_a_burst_of_connections_is_queued_not_refused():
    """Before accepting any (not started), 64 connections must all be let in: the stdlib's
    backlog of 5 left the rest hanging, and the gateway counted an AI API that was down."""
    server = LoopbackServer(QuietHandler)
    port = urlsplit(server.url).port
    try:
        with ExitStack() as stack:
            for _ in range(64):
                sock = stack.enter_context(socket.socket())
                sock.settimeout(1.0)
                sock.connect(("127.0.0.1", port))
    finally:
        server.stop()
