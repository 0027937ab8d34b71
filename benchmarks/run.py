"""Runs the benchmark suite: `python -m benchmarks.run [--quick] [--only NAME...] [--json-out FILE]`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import Report, machine_context

SUITES = ["embedding", "http", "search", "backends", "index", "peers", "cluster", "warmup"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small sizes (under five minutes)")
    sizes.add_argument("--tiny", action="store_true", help="smoke-test sizes (for the test suite)")
    parser.add_argument("--only", nargs="+", choices=SUITES, help="run only these suites")
    parser.add_argument("--json-out", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = Report(size=size, context=machine_context())
    began = time.perf_counter()
    suite_seconds: dict[str, float] = {}
    for name in args.only or SUITES:
        print(f"== {name}", flush=True)
        suite_began = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}_bench").run(report)
        suite_seconds[name] = round(time.perf_counter() - suite_began, 1)
        print(f"== {name}: {suite_seconds[name]} s", flush=True)
    report.context["suite_seconds"] = suite_seconds
    report.finish(began, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
