"""Runs the benchmark suite: `python -m benchmarks.run [--quick] [--only NAME...] [--json-out FILE]`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import Report, machine_context

SUITES = ["embedding", "search", "backends", "index", "peers"]


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
    for name in args.only or SUITES:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}_bench").run(report)
    report.context["seconds"] = round(time.perf_counter() - began, 1)
    report.print_table()
    report.write_json(args.json_out)
    print(f"\nwrote {args.json_out} ({report.context['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
