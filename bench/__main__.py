"""`make bench`: every benchmark in turn, or the ones named (`python -m bench gateway slow kb`).

Each benchmark measures its own baseline in the same run, prints its figures and a
PASS/FAIL line per target, and writes JSON to bench/results/ (git-ignored). The exit
status is non-zero when any target was missed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

BENCHMARKS = {
    "gateway": ("bench.gateway_throughput", "gateway throughput against bare Flask (issue 2)"),
    "slow": ("bench.slow_reply", "slow AI answers across WeChat's retries (issue 4)"),
    "kb": ("bench.kb_latency", "knowledge-base load time and answer latency (issue 3)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="any of: " + ", ".join(f"{k} ({v[1]})" for k, v in BENCHMARKS.items()),
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    status = 0
    for name in args.names or list(BENCHMARKS):
        module_name, title = BENCHMARKS[name]
        if importlib.util.find_spec(module_name) is None:
            sys.stdout.write(f"== {name}: SKIP, {module_name} does not exist yet\n")
            continue
        sys.stdout.write(f"== {name}: {title}\n")
        sys.stdout.flush()
        result = importlib.import_module(module_name).main()
        status = status or (result if isinstance(result, int) else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
