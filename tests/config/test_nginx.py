"""infra/nginx: the real `nginx -t` on a loopback copy, and the allow-list, TLS and proxy rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.processes import (
    NGINX_CONF,
    free_port,
    make_self_signed_cert,
    nginx_test,
    render_nginx_conf,
)


def _server_blocks(text: str) -> list[str]:
    """Top-level `server { ... }` blocks, by brace matching."""
    blocks, start, depth = [], None, 0
    for match in re.finditer(r"\bserver\s*\{|\{|\}", text):
        token = match.group(0)
        if token.startswith("server") and depth == 0:
            start, depth = match.start(), 1
        elif token.endswith("{"):
            depth += 1 if start is not None else 0
        elif start is not None:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : match.end()])
                start = None
    return blocks


@pytest.fixture(scope="module")
def conf_text() -> str:
    # Comments removed so a rule cannot be satisfied by prose.
    return re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())


@pytest.fixture(scope="module")
def servers(conf_text: str) -> dict[str, str]:
    by_port = {}
    for block in _server_blocks(conf_text):
        port = re.search(r"listen\s+(\d+)", block)
        assert port, block
        by_port[port.group(1)] = block
    assert set(by_port) == {"80", "443", "8080"}
    return by_port


def test_nginx_t_accepts_the_config(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_self_signed_cert(certs)
    conf = render_nginx_conf(
        tmp_path / "nginx",
        gateway_addr=f"127.0.0.1:{free_port()}",
        http_port=free_port(),
        https_port=free_port(),
        status_port=free_port(),
        cert_dir=certs,
    )
    result = nginx_test(conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_port_80_redirects_except_the_acme_challenge(servers: dict[str, str]) -> None:
    http = servers["80"]
    assert re.search(r"location\s+\^~\s+/\.well-known/acme-challenge/\s*\{[^}]*root\s", http)
    assert re.search(r"location\s+/\s*\{\s*return\s+301\s+https://\$host\$request_uri;", http)
    assert "proxy_pass" not in http


def test_tls_is_modern_with_hsts_and_stapling(servers: dict[str, str]) -> None:
    tls = servers["443"]
    assert re.search(r"listen\s+443\s+ssl\s+http2", tls)  # nginx 1.22 syntax
    assert re.search(r"ssl_protocols\s+TLSv1\.2\s+TLSv1\.3;", tls)
    ciphers = re.search(r"ssl_ciphers\s+([^;]+);", tls).group(1).split(":")
    assert all(("GCM" in c or "CHACHA20" in c) and c.startswith("ECDHE") for c in ciphers)
    assert re.search(r'Strict-Transport-Security\s+"max-age=(\d+)[^"]*"\s+always', tls)
    assert int(re.search(r"max-age=(\d+)", tls).group(1)) >= 31536000
    assert re.search(r"ssl_stapling\s+on;", tls) and re.search(r"ssl_stapling_verify\s+on;", tls)
    assert "ssl_session_tickets off;" in tls


def test_only_wechat_is_proxied(servers: dict[str, str]) -> None:
    tls = servers["443"]
    locations = re.findall(r"location\s+([^{]+?)\s*\{", tls)
    assert sorted(locations) == ["/", "= /wechat"]
    catch_all = re.search(r"location\s+/\s*\{([^}]*)\}", tls).group(1)
    assert re.search(r"return\s+40[34];", catch_all)  # /health, /metrics, /_debug_signature
    assert len(re.findall(r"proxy_pass", tls)) == 1


def test_wechat_location_forwards_the_client_and_fits_the_5s_window(
    servers: dict[str, str],
) -> None:
    wechat = re.search(r"location\s+=\s+/wechat\s*\{(.*?)\n    \}", servers["443"], re.S).group(1)
    # Overwrite, never append: the gateway trusts exactly one hop.
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", wechat)
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;", wechat)
    assert re.search(r"proxy_set_header\s+Host\s+\$host;", wechat)
    assert re.search(r"proxy_http_version\s+1\.1;", wechat)

    def seconds(name: str) -> int:
        return int(re.search(rf"{name}\s+(\d+)s;", wechat).group(1))

    # The gateway may hold a slow reply ~5.5 s; nginx must not cut it first.
    assert seconds("proxy_read_timeout") >= 10
    assert seconds("proxy_send_timeout") >= 10
    assert seconds("proxy_connect_timeout") <= 3
    # The upstream group, on keep-alive connections.
    assert re.search(r"proxy_pass\s+http://wechat_gateway;", wechat)
    assert re.search(r'proxy_set_header\s+Connection\s+"";', wechat)


def test_upstream_keeps_connections_alive_to_every_replica(conf_text: str) -> None:
    upstream = re.search(r"upstream\s+wechat_gateway\s*\{(.*?)\}", conf_text, re.S).group(1)
    assert re.search(r"server\s+wechat-gateway:9090\b", upstream)
    assert int(re.search(r"keepalive\s+(\d+);", upstream).group(1)) >= 8
    # nginx must close idle connections before Gunicorn does (keepalive = 5 s there).
    assert int(re.search(r"keepalive_timeout\s+(\d+)s;", upstream).group(1)) < 5


def test_body_limit_matches_the_gateway(servers: dict[str, str]) -> None:
    assert re.search(r"client_max_body_size\s+64k;", servers["443"])


def test_resolver_is_dockers_embedded_dns(conf_text: str) -> None:
    assert re.search(r"^resolver\s+127\.0\.0\.11\s+valid=\d+s", conf_text, re.M)


def test_stub_status_is_internal_only(servers: dict[str, str]) -> None:
    status = servers["8080"]
    assert "stub_status;" in status
    assert re.search(r"deny\s+all;", status)
    allowed = re.findall(r"allow\s+([^;]+);", status)
    assert "all" not in allowed and "127.0.0.1" in allowed


def test_where_the_operator_sets_the_wechat_url_says_ports_80_and_443() -> None:
    text = NGINX_CONF.read_text()
    assert "WeChat only calls ports 80 and 443" in text
