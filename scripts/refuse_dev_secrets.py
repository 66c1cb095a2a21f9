"""Refuse to start production with a development secret: a one-shot check run by compose.prod.yaml.

Usage: refuse_dev_secrets.py ENV_EXAMPLE [NAME ...] [NAME? ...]
Each NAME must be set, non-empty, and differ from its value in ENV_EXAMPLE (the development
values everyone can read); a NAME? may be unset, but when set it must differ too.
Exit 0 when all pass; exit 1 naming every offending variable, never
printing a value; exit 2 when ENV_EXAMPLE is not a file (a missing bind mount makes Docker
create an empty directory there, and nothing would be refused). Standard library only: it
runs in the gateway image.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def example_values(path: Path) -> dict[str, str]:
    """NAME=value pairs of a dotenv file; comments, blanks and `export ` prefixes ignored."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def problems(names: list[str], env: dict[str, str], dev: dict[str, str]) -> list[str]:
    """One message per variable that is missing or still holds its development value."""
    found = []
    for spec in names:
        name, optional = spec.removesuffix("?"), spec.endswith("?")
        value = env.get(name, "")
        if not value:
            if not optional:
                found.append(f"{name} is not set")
        elif dev.get(name) and value == dev[name]:
            found.append(f"{name} still has its development value from .env.example")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    example = Path(argv[1])
    if not example.is_file():
        print(
            f"refusing to start in production: {example} is not a file, so the development "
            "values cannot be checked",
            file=sys.stderr,
        )
        return 2
    dev = example_values(example)
    found = problems(argv[2:], dict(os.environ), dev)
    for message in found:
        print(f"refusing to start in production: {message}", file=sys.stderr)
    if not found:
        print(f"production secrets checked: {' '.join(argv[2:])}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
