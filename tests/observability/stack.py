"""The monitoring stack on loopback for the observability proof.

Real programs (Prometheus, Alertmanager, the exporters, nginx, the relay) started with test
copies of the repository's own config files: the copies change only addresses and make
intervals short, so what is proven is the committed configuration.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

from tests.support.loopback_server import LoopbackServer, send_json
from tests.support.processes import (
    REPO_ROOT,
    Process,
    free_port,
    http_ok,
    make_self_signed_cert,
    render_nginx_conf,
    require_binary,
    start_nginx,
    start_process,
)
from tests.support.promql import ALERTMANAGER_YML, PROMETHEUS_YML, RULES_DIR

RELAY_DIR = REPO_ROOT / "services" / "alert-relay"


# -- a fake LLM -------------------------------------------------------------------------------
SLOW_WORD = "慢"  # the fake LLM answers a question containing it after LLM_SLOW_S
BROKEN_WORD = "坏"  # ... and answers 500 to one containing it
LLM_SLOW_S = 6.5


class FakeLLM(LoopbackServer):
    """An OpenAI-compatible /chat/completions that is fast, slow or broken by the question."""

    def __init__(self) -> None:
        super().__init__(self._handler_class())

    @staticmethod
    def _handler_class() -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                question = body["messages"][-1]["content"]
                if not self.path.endswith("/chat/completions"):
                    status, answer = 404, {"error": {"message": "not found"}}
                elif BROKEN_WORD in question:
                    status, answer = 500, {"error": {"message": "upstream exploded"}}
                else:
                    if SLOW_WORD in question:
                        time.sleep(LLM_SLOW_S)
                    message = {"role": "assistant", "content": "这是模型的回答。"}
                    status, answer = 200, {"choices": [{"index": 0, "message": message}]}
                send_json(self, status, answer)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def fake_llm() -> Iterator[FakeLLM]:
    llm = FakeLLM().start()
    try:
        yield llm
    finally:
        llm.stop()


# -- config copies ---------------------------------------------------------------------------
def prometheus_config(
    targets: dict[str, list[str]],
    *,
    rule_files: list[str],
    alertmanager: str | None,
    blackbox: str | None = None,
    interval: str = "1s",
) -> dict[str, Any]:
    """infra/prometheus/prometheus.yml with loopback targets and short intervals.

    `targets` maps each job of the real file to its loopback addresses; a job left out is
    an error, so a job added to the real file cannot silently escape the proof.
    """
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(
        scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval
    )
    config["rule_files"] = rule_files
    if alertmanager:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    else:
        config.pop("alerting")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert set(targets) == jobs, f"give loopback targets for exactly these jobs: {sorted(jobs)}"
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__":
                assert blackbox, f"job {job['job_name']} needs the blackbox exporter address"
                relabel["replacement"] = blackbox
    return config


def rules_with_short_for(tmp_dir: Path, for_: str = "1s") -> list[str]:
    """Copies of the real rule files whose alerts wait `for_` instead of minutes."""
    paths = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = for_
        copy = tmp_dir / f"short-for-{path.name}"
        copy.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        paths.append(str(copy))
    return paths


def alertmanager_config(relay_url: str) -> dict[str, Any]:
    """infra/alertmanager/alertmanager.yml sending to the loopback relay, grouping in ~1 s."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    config["route"].update(group_wait="1s", group_interval="2s")
    [receiver] = config["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"].startswith("http://alert-relay:9095/")
    webhook["url"] = relay_url + urllib.parse.urlsplit(webhook["url"]).path
    return config


# -- programs -----------------------------------------------------------------------------------
def write_yaml(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    return path


def start_prometheus(log_dir: Path, config: dict[str, Any], name: str = "prometheus") -> Process:
    """Prometheus on a free port; its own `prometheus` job scrapes that port."""
    binary = require_binary("prometheus", "apt-get install prometheus")
    port = free_port()
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config_path = write_yaml(log_dir / f"{name}.yml", config)
    data = log_dir / f"{name}-data"
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        # An alert that fires before the notifier has found Alertmanager is resent after
        # this delay (1 m by default): short, so tests wait on the event, not a minute.
        "--rules.alert.resend-delay=1s",
    ]
    proc = start_process(
        name, argv, log_dir, port=port, ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready")
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    return proc


def start_alertmanager(log_dir: Path, config: dict[str, Any]) -> Process:
    binary = require_binary("prometheus-alertmanager", "apt-get install prometheus-alertmanager")
    port = free_port()
    config_path = write_yaml(log_dir / "alertmanager.yml", config)
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={log_dir / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    proc = start_process(
        "alertmanager",
        argv,
        log_dir,
        port=port,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    return proc


def start_relay(log_dir: Path, webhook_url: str) -> Process:
    port = free_port()
    env = {
        "ALERT_WECOM_WEBHOOK_URL": webhook_url,
        "ALERT_RELAY_HOST": "127.0.0.1",
        "ALERT_RELAY_PORT": str(port),
        "PYTHONPATH": str(RELAY_DIR),
    }
    proc = start_process(
        "alert-relay",
        [sys.executable, "-m", "alert_relay"],
        log_dir,
        env=env,
        cwd=RELAY_DIR,
        port=port,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    return proc


def start_redis_exporter(log_dir: Path, redis_port: int) -> Process:
    binary = require_binary(
        "prometheus-redis-exporter", "apt-get install prometheus-redis-exporter"
    )
    port = free_port()
    argv = [
        binary,
        f"-redis.addr=redis://127.0.0.1:{redis_port}",
        f"-web.listen-address=127.0.0.1:{port}",
    ]
    return start_process("redis-exporter", argv, log_dir, port=port)


def start_nginx_exporter(log_dir: Path, stub_status_url: str) -> Process:
    binary = require_binary(
        "prometheus-nginx-exporter", "apt-get install prometheus-nginx-exporter"
    )
    port = free_port()
    argv = [binary, f"-nginx.scrape-uri={stub_status_url}", f"-web.listen-address=127.0.0.1:{port}"]
    return start_process("nginx-exporter", argv, log_dir, port=port)


def start_blackbox_exporter(log_dir: Path) -> Process:
    binary = require_binary(
        "prometheus-blackbox-exporter", "apt-get install prometheus-blackbox-exporter"
    )
    port = free_port()
    argv = [
        binary,
        f"--config.file={REPO_ROOT / 'infra' / 'prometheus' / 'blackbox.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return start_process(
        "blackbox-exporter",
        argv,
        log_dir,
        port=port,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/healthy"),
    )


def start_real_nginx(log_dir: Path, gateway_addr: str) -> Process:
    """infra/nginx itself (rendered for loopback): TLS in front of a gateway, stub_status."""
    cert_dir = log_dir / "certs"
    make_self_signed_cert(cert_dir)
    http_port, https_port, status_port = free_port(), free_port(), free_port()
    conf = render_nginx_conf(
        log_dir / "nginx",
        gateway_addr=gateway_addr,
        http_port=http_port,
        https_port=https_port,
        status_port=status_port,
        cert_dir=cert_dir,
    )
    proc = start_nginx(conf, log_dir, https_port)
    proc.extra.update(
        url=f"https://127.0.0.1:{https_port}",
        cafile=str(cert_dir / "fullchain.pem"),
        tls=f"127.0.0.1:{https_port}",
        stub_status=f"http://127.0.0.1:{status_port}/stub_status",
    )
    return proc


# -- Prometheus's HTTP API -------------------------------------------------------------------
def api(prometheus_url: str, path: str, **params: Any) -> Any:
    """GET /api/v1/<path>; returns `data`, raises with Prometheus's error text."""
    url = f"{prometheus_url}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
    except urllib.error.HTTPError as exc:
        document = json.load(exc)
        raise AssertionError(f"{path} {params}: {document.get('error')}") from None
    assert document["status"] == "success", document
    return document["data"]
