"""Keep every production build of our images, and go back to one: `make prod-up` tags,
`make prod-rollback TAG=...` restores, `make prod-images` lists.

Usage: release.py tag|list -- COMPOSE...
       release.py rollback TAG -- COMPOSE...
COMPOSE is the production compose command (`docker compose --env-file ... -f ... -f ...`).

The stack always runs the images tagged `IMAGE_TAG` (prod.env, `local` by default): the
runbook's plain `docker compose up -d wechat-gateway` then finds the image that is deployed,
not a fresh build of whatever the checkout holds. `tag` also names each image the stack
builds after the commit it was built from (`-dirty` when the tree had changes), so the
next build does not leave the previous one nameless. `rollback TAG` points `IMAGE_TAG` back
at those images, all or none, and recreates the containers without building: no network,
no PyPI, seconds. Exit 2 on a usage error or a TAG some image lacks (nothing is changed).
Standard library only: it runs with the production host's python3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ReleaseError(Exception):
    """A rollback or tag that must not go ahead; the message says why."""


def run(argv: Sequence[str], capture: bool = True) -> str:
    """Run a command; its stdout, or ReleaseError with its stderr when it fails."""
    done = subprocess.run(list(argv), capture_output=capture, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        detail = (done.stderr or "").strip() if capture else ""
        raise ReleaseError(f"`{' '.join(argv)}` failed ({done.returncode}) {detail}".strip())
    return done.stdout if capture else ""


def built_images(compose: Sequence[str]) -> list[str]:
    """`repo:IMAGE_TAG` of every service the stack builds itself, as compose resolves them."""
    config = json.loads(run([*compose, "config", "--format", "json"]))
    return sorted(
        {svc["image"] for svc in config["services"].values() if "build" in svc and "image" in svc}
    )


def commit_tag() -> str:
    """The checkout's commit, `-dirty` when tracked files differ from it."""
    commit = run(["git", "rev-parse", "--short=12", "HEAD"]).strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, check=False).returncode
    return f"{commit}-dirty" if dirty else commit


def image_id(ref: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def repository(ref: str) -> str:
    return ref.rpartition(":")[0]


def tag(compose: Sequence[str]) -> str:
    """Name the images just built after the commit; the tag given."""
    release = commit_tag()
    for ref in built_images(compose):
        run(["docker", "tag", ref, f"{repository(ref)}:{release}"])
    print(f"images tagged {release}: `make prod-rollback TAG={release}` brings this build back")
    return release


def rollback(release: str, compose: Sequence[str]) -> None:
    """Point every built image's running tag at `release`, then recreate without building."""
    refs = built_images(compose)
    wanted = [f"{repository(ref)}:{release}" for ref in refs]
    missing = [ref for ref in wanted if image_id(ref) is None]
    if missing:
        raise ReleaseError(
            f"no build tagged {release!r} for: {', '.join(missing)}; nothing changed "
            "(`make prod-images` lists the builds kept)"
        )
    for kept, ref in zip(wanted, refs, strict=True):
        run(["docker", "tag", kept, ref])
    print(f"images {', '.join(refs)} now point at {release}; recreating the containers")
    run([*compose, "up", "-d", "--no-build", "--remove-orphans"], capture=False)


def list_builds(compose: Sequence[str]) -> None:
    """Every kept build of the gateway image; `*` marks the one the stack runs."""
    refs = built_images(compose)
    gateway = next((ref for ref in refs if "wechat-gateway" in ref), refs[0])
    running = image_id(gateway)
    listing = run(
        [
            "docker",
            "image",
            "ls",
            repository(gateway),
            "--format",
            "{{.ID}}\t{{.Tag}}\t{{.CreatedSince}}",
        ]
    )
    print(f"builds of {repository(gateway)} (* = running as {gateway.rpartition(':')[2]}):")
    for line in listing.splitlines():
        short_id, _, rest = line.partition("\t")
        mark = "*" if running and running.split(":")[-1].startswith(short_id) else " "
        print(f"{mark} {rest.replace(chr(9), '  ')}")


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    command, compose = argv[1:split], argv[split + 1 :]
    try:
        match command:
            case ["tag"]:
                tag(compose)
            case ["list"]:
                list_builds(compose)
            case ["rollback", release] if release:
                rollback(release, compose)
            case _:
                print(__doc__, file=sys.stderr)
                return 2
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
