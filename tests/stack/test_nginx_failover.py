"""nginx (infra/nginx) passes a callback that one gateway replica drops to another replica.

A replica that is stopping, or dies, can close a connection after nginx has sent the
callback on it. The callback must reach another replica, not come back as a 502 (which
WeChat shows as '该公众号暂时无法提供服务' once its retries run out): a POST sent twice is
safe, since the gateway answers a duplicate from its dedup store.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.support.processes import (
    free_port,
    make_self_signed_cert,
    nginx_test,
    render_nginx_conf,
    start_gateway,
    start_nginx,
)
from tests.support.tls import verified_session
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = pytest.mark.integration
ACCOUNT = Account()


class DroppingReplica:
    """A listener that reads each request and closes the connection without answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536):
                    self.dropped += 1

    def close(self) -> None:
        self.sock.close()


def test_a_callback_dropped_by_one_replica_is_answered_by_another(tmp_path: Path, fake_ai):
    gateway = start_gateway(tmp_path, {**ACCOUNT.env(), "AI_API_URL": fake_ai.url}, workers=1)
    dropping = DroppingReplica()
    https_port = free_port()
    cert = make_self_signed_cert(tmp_path / "certs")
    # Two upstream servers where the file has one: the dropping replica listed first.
    both = (
        f"127.0.0.1:{dropping.port} max_fails=1 fail_timeout=5s;\n"
        f"    server {gateway.extra['url'].removeprefix('http://')}"
    )
    conf = render_nginx_conf(
        tmp_path / "nginx",
        gateway_addr=both,
        http_port=free_port(),
        https_port=https_port,
        status_port=free_port(),
        cert_dir=cert.parent,
    )
    assert nginx_test(conf).returncode == 0
    nginx = start_nginx(conf, tmp_path, https_port)
    try:
        session = verified_session(str(cert))
        sim = WeChatSimulator(f"https://127.0.0.1:{https_port}/wechat", ACCOUNT, session=session)
        session.verify = str(cert)  # the simulator turns verification off; turn it back on
        attempts = [sim.post(text_message(f"问{n}", openid=f"oFailover{n}")) for n in range(4)]
        assert [a.status for a in attempts] == [200] * 4
        assert [a.reply["Content"] for a in attempts] == [f"答：问{n}" for n in range(4)]
        assert dropping.dropped >= 1, "nginx never tried the dropping replica"
    finally:
        nginx.stop()
        dropping.close()
        gateway.stop()
