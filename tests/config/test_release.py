"""scripts/release.py and `make prod-rollback`: every production build kept, any one restored.

The compose model comes from the real Compose binary (`config` needs no engine); the
Docker engine's image store is a stand-in (`docker` on PATH, images in a JSON file), as no
engine runs in `make test`. `make test-compose` runs the real engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, require_binary, run_script

GATEWAY = "celestial-nexus/wechat-gateway"
AI_API = "celestial-nexus/ai-api"

# `docker image inspect/tag/ls` over a JSON file {ref: image id}; every call is logged.
FAKE_DOCKER = """#!{python}
import json, sys
from pathlib import Path
state_path, log = Path({state!r}), Path({log!r})
with log.open("a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
images = json.loads(state_path.read_text())
args = sys.argv[1:]
if args[:2] == ["image", "inspect"]:
    ref = args[-1]
    if ref not in images:
        sys.exit("Error: No such image: " + ref)
    print(images[ref])
elif args[0] == "tag":
    source, target = args[1], args[2]
    if source not in images:
        sys.exit("Error: No such image: " + source)
    images[target] = images[source]
    state_path.write_text(json.dumps(images))
elif args[:2] == ["image", "ls"]:
    for ref, image in images.items():
        if ref.rpartition(":")[0] == args[2]:
            print(image.split(":")[1][:12] + "\\t" + ref.rpartition(":")[2] + "\\t2 hours ago")
else:
    sys.exit("fake docker: unexpected " + " ".join(args))
"""
# The production compose command: `config` by the real binary, `up` only logged.
FAKE_COMPOSE = """#!/bin/sh
case " $* " in
  *" up "*) echo "up $*" >> {log} ;;
  *) exec {compose} --project-directory {repo} --env-file {env} \\
       -f {repo}/compose.yaml -f {repo}/compose.prod.yaml "$@" ;;
esac
"""


class Host:
    """A production host's image store and compose command, for one test."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "images.json"
        self.log = tmp / "docker.log"
        self.log.touch()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        env_file = tmp / "prod.env"
        env_file.write_text(
            "WECHAT_TOKEN=t0ken\nWECHAT_APPID=wx1111222233334444\n"
            f"WECHAT_ENCODING_AES_KEY={'A' * 43}\nALERT_WECOM_WEBHOOK_URL=https://example.com/x\n"
        )
        docker = self.bin / "docker"
        docker.write_text(
            FAKE_DOCKER.format(python=sys.executable, state=str(self.state), log=str(self.log))
        )
        compose = self.bin / "prod-compose"
        compose.write_text(
            FAKE_COMPOSE.format(
                log=self.log,
                compose=require_binary("docker-compose", "requirements-dev"),
                repo=REPO_ROOT,
                env=env_file,
            )
        )
        docker.chmod(0o755)
        compose.chmod(0o755)
        self.compose = str(compose)

    def built(self, tag: str, *repos: str) -> None:
        """Images of `repos` as a build leaves them: each with a new id, tagged `tag`."""
        images = json.loads(self.state.read_text()) if self.state.exists() else {}
        for repo in repos:
            images[f"{repo}:{tag}"] = f"sha256:{len(images):02d}{repo.encode().hex()[:60]:0<62}"
        self.state.write_text(json.dumps(images))

    def images(self) -> dict[str, str]:
        return json.loads(self.state.read_text())

    def release(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}
        return run_script("release.py", *args, "--", self.compose, env=env, timeout_s=60)

    def ups(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("up ")]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def built_repos(host: Host) -> list[str]:
    """Every image the stack builds, as the real compose config names them."""
    config = subprocess.run(
        [host.compose, "config", "--format", "json"], capture_output=True, text=True, check=True
    )
    services = json.loads(config.stdout)["services"].values()
    return sorted({svc["image"].rpartition(":")[0] for svc in services if "build" in svc})


def test_tag_names_every_built_image_after_the_commit(host: Host) -> None:
    repos = built_repos(host)
    assert {GATEWAY, AI_API} <= set(repos)
    assert all(repo.startswith("celestial-nexus/") for repo in repos)  # not redis, nginx ...
    host.built("local", *repos)

    tagged = host.release("tag")

    assert tagged.returncode == 0, tagged.stderr
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    release = re.search(r"images tagged (\S+):", tagged.stdout)
    assert release and re.fullmatch(rf"{commit}(-dirty)?", release[1])
    images = host.images()
    for repo in repos:
        assert images[f"{repo}:{release[1]}"] == images[f"{repo}:local"]


def test_rollback_points_the_running_tag_at_the_kept_build_and_recreates(host: Host) -> None:
    repos = built_repos(host)
    host.built("good", *repos)  # an earlier release, kept under its commit
    host.built("local", *repos)  # the bad one, running
    before = host.images()

    back = host.release("rollback", "good")

    assert back.returncode == 0, back.stderr
    after = host.images()
    for repo in repos:
        assert after[f"{repo}:local"] == before[f"{repo}:good"] != before[f"{repo}:local"]
    [up] = host.ups()
    assert " up -d --no-build --remove-orphans" in up


def test_rollback_to_a_build_some_image_lacks_changes_nothing(host: Host) -> None:
    repos = built_repos(host)
    host.built("local", *repos)
    host.built("partial", *[repo for repo in repos if repo != AI_API])
    before = host.images()

    back = host.release("rollback", "partial")

    assert back.returncode == 2
    assert f"{AI_API}:partial" in back.stderr and "nothing changed" in back.stderr
    assert host.images() == before
    assert host.ups() == []


def test_list_marks_the_running_build(host: Host) -> None:
    host.built("abc123", GATEWAY)
    host.built("local", GATEWAY)
    listing = host.release("list")
    assert listing.returncode == 0, listing.stderr
    marked = [line for line in listing.stdout.splitlines() if line.startswith("*")]
    assert [line.split()[1] for line in marked] == ["local"]
    assert any(line.split()[0] == "abc123" for line in listing.stdout.splitlines()[1:])


@pytest.mark.parametrize("args", [["rollback"], ["rollback", ""], ["promote"]])
def test_usage_errors_exit_2(host: Host, args: list[str]) -> None:
    assert host.release(*args).returncode == 2


def test_make_prod_rollback_without_tag_says_how(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("")
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "prod-rollback", f"PROD_ENV_FILE={env_file}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "make prod-rollback TAG=" in done.stdout
