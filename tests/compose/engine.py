"""A Docker engine of the tests' own, and stand-ins for the upstream images no registry serves here.

The engine is Debian's dockerd with every path under one short temporary root, so it neither
needs nor touches a system Docker. The stand-ins are built FROM a debootstrapped Debian
bookworm with Debian's packages and tagged with the exact upstream names that compose.yaml and
the services' Dockerfiles use, so those files are built and run unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO_ROOT, VENV_BIN, wait_until

STANDINS_DIR = Path(__file__).parent / "standins"
BASE_IMAGE = "localbase:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Upstream repository -> the stand-in folder that replaces it (None: the debootstrapped base
# itself, retagged). An image the stack needs that is not here fails the test by name.
STANDIN_FOR_REPOSITORY: dict[str, str | None] = {
    "python": "python",
    "redis": "redis",
    "nginx": "nginx",
    "prom/prometheus": "prometheus",
    "certbot/certbot": "certbot",
    "debian": None,
}


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def needed_upstream_images(config: dict, services: list[str]) -> set[str]:
    """Every upstream image the given services run or build FROM (compose's merged model)."""
    images = set()
    for name in services:
        svc = config["services"][name]
        build = svc.get("build")
        if not build:
            images.add(svc["image"])
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        stages = set()
        for match in re.finditer(
            r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile.read_text(), flags=re.M | re.I
        ):
            if match.group(1) not in stages:
                images.add(match.group(1))
            if match.group(2):
                stages.add(match.group(2))
    return images


def standin_plan(images: set[str]) -> dict[str, str | None]:
    """Upstream tag -> stand-in folder (None: retag the base). Unknown images fail loudly."""
    unknown = sorted(i for i in images if _repository(i) not in STANDIN_FOR_REPOSITORY)
    assert not unknown, f"no stand-in for {unknown}: add one under {STANDINS_DIR}"
    return {image: STANDIN_FOR_REPOSITORY[_repository(image)] for image in sorted(images)}


def local_extra_ca() -> str:
    """PEM of the CAs this machine added to its trust store (a TLS-intercepting proxy's CA).

    Passed as the EXTRA_CA_CERT build argument so pip inside an image build trusts what the
    host trusts; empty where the machine added none.
    """
    pems = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    return "".join(p.read_text() for p in pems if "BEGIN CERTIFICATE" in p.read_text())


@dataclass
class Engine:
    """A running dockerd and the environment that points the docker and compose CLIs at it."""

    root: Path
    popen: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def docker(
        self, *args: str, timeout_s: float = 120, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess:
        return _run(["docker", *args], self.env, timeout_s, check, stdin)

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0


def _run(
    argv: list[str],
    env: dict[str, str],
    timeout_s: float,
    check: bool,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, timeout=timeout_s, cwd=cwd, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} ... exited {result.returncode}:\n"
            f"{result.stdout.decode(errors='replace')[-3000:]}\n"
            f"{result.stderr.decode(errors='replace')[-3000:]}"
        )
    return result


def start_engine(data_root: Path | None = None) -> Engine:
    """Start dockerd with its own socket, data, exec root and pid file; wait until it answers.

    The root is short on purpose: containerd's sockets live under it and unix socket paths
    are limited to 108 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="cn-dkr-", dir="/tmp"))
    data = data_root or root / "data"
    (root / "config").mkdir()
    (root / "daemon.json").write_text("{}\n")  # ignore any /etc/docker/daemon.json
    sock = root / "docker.sock"
    log_path = root / "dockerd.log"
    argv = [
        "/usr/sbin/dockerd",
        "--data-root",
        str(data),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "dockerd.pid"),
        "--config-file",
        str(root / "daemon.json"),
        "-H",
        f"unix://{sock}",
    ]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_CONFIG": str(root / "config"),  # no credential helpers or contexts of the host
        "DOCKER_BUILDKIT": "0",  # the classic builder: no buildx plugin here
        "COMPOSE_DOCKER_CLI_BUILD": "0",
    }
    engine = Engine(root=root, popen=popen, log_path=log_path, env=env)

    def answers() -> bool:
        if popen.poll() is not None:
            return True
        return sock.exists() and engine.docker("version", check=False, timeout_s=10).returncode == 0

    try:
        wait_until(answers, 60, "dockerd to answer")
    except TimeoutError:
        stop_engine(engine)
        raise
    if popen.poll() is not None:
        log = log_path.read_text(errors="replace")[-3000:]
        stop_engine(engine)
        raise RuntimeError(f"dockerd exited at start-up:\n{log}")
    return engine


def stop_engine(engine: Engine, *, keep_data: bool = False) -> None:
    """Stop dockerd by its own pid (its containerd with it), unmount leftovers, delete the root."""
    if engine.popen.poll() is None:
        engine.popen.send_signal(signal.SIGTERM)
        try:
            engine.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            engine.popen.kill()
            engine.popen.wait(timeout=10)
    root = str(engine.root)
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(root)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    if not keep_data:
        shutil.rmtree(engine.root, ignore_errors=True)


def ensure_base_image(engine: Engine, cache_dir: Path | None = None) -> None:
    """localbase:bookworm: `debootstrap --variant=minbase bookworm` imported as an image.

    With `cache_dir` the root filesystem tarball is kept there for later runs.
    """
    if engine.image_exists(BASE_IMAGE):
        return
    tarball = (cache_dir or engine.root) / "bookworm-minbase.tar"
    if not tarball.exists():
        rootfs = engine.root / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            dict(os.environ),
            600,
            True,
        )
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], dict(os.environ), 300, True)
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    engine.docker("import", str(tarball), BASE_IMAGE, timeout_s=300)


def build_standins(engine: Engine, plan: dict[str, str | None]) -> dict[str, float]:
    """Build each stand-in and tag it with its upstream name; returns seconds per image.

    Each image carries a hash of its Dockerfile, so a cached engine (COMPOSE_TEST_CACHE)
    rebuilds a stand-in whose Dockerfile changed.
    """
    durations = {}
    for tag, standin in plan.items():
        started = time.monotonic()
        if standin is None:
            engine.docker("tag", BASE_IMAGE, tag)
        else:
            folder = STANDINS_DIR / standin
            digest = hashlib.sha256((folder / "Dockerfile").read_bytes()).hexdigest()[:16]
            current = (
                engine.docker(
                    "image",
                    "inspect",
                    "-f",
                    '{{index .Config.Labels "cn.standin"}}',
                    tag,
                    check=False,
                )
                .stdout.decode()
                .strip()
            )
            if current != digest:
                engine.docker(
                    "build",
                    "--quiet",
                    "--label",
                    f"cn.standin={digest}",
                    "-t",
                    tag,
                    str(folder),
                    timeout_s=600,
                )
        durations[tag] = round(time.monotonic() - started, 1)
    return durations


@dataclass
class ComposeProject:
    """`docker compose` on the repository's compose files, as one throw-away project."""

    engine: Engine
    name: str
    env: dict[str, str]
    files: tuple[str, ...] = ("compose.yaml",)

    def argv(self) -> list[str]:
        """The compose command of this project (files may be absolute paths)."""
        argv = [
            str(VENV_BIN / "docker-compose"),
            "--project-name",
            self.name,
            "--project-directory",
            str(REPO_ROOT),
            "--env-file",
            self.env["CN_ENV_FILE"],
        ]
        for name in self.files:
            argv += ["-f", str(REPO_ROOT / name)]
        return argv

    def __call__(
        self, *args: str, timeout_s: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess:
        return _run(
            [*self.argv(), *args], {**self.engine.env, **self.env}, timeout_s, check, cwd=REPO_ROOT
        )

    def text(self, *args: str, timeout_s: float = 60) -> str:
        return self(*args, timeout_s=timeout_s).stdout.decode(errors="replace")
