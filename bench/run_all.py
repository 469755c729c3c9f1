"""Run every benchmark in turn, then draw the chart; `--quick` is the CI smoke pass (small sizes, no
timing goals, results in quick.json and results/chart-quick.png, never the committed chart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "server_capacity.py",
    "client_vs_sdk.py",
    "poll_cycle.py",
    "many_projects.py",
    "ack_latency.py",
    "burst.py",
]


def main() -> int:
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== {name} {' '.join(extra)}", flush=True)
        if subprocess.call([sys.executable, str(HERE / name), *extra], cwd=HERE) != 0:
            failed.append(name)
    print("\n=== chart.py", *extra, flush=True)
    if subprocess.call([sys.executable, str(HERE / "chart.py"), *extra], cwd=HERE) != 0:
        failed.append("chart.py")
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if extra:
        print("\nquick pass: a smoke test at small sizes; the goals apply to the full run only")
    merged = HERE / "results" / ("quick.json" if extra else "latest.json")
    print(f"\nresults: {merged} and one file per benchmark beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
