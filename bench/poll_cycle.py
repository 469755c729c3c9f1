"""`kpsbot watch --once` as a whole process, against the floor of merely fetching the same pages.

For each size: a baseline cycle (not timed), then no-change cycles, then cycles with 10% churn
(a tenth of the tasks finish and as many new ones start). Wall time, CPU time and peak RSS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, TOKEN, kps_env, measure, median_run, print_table, save, sim_control, simulator


def run_size(tasks: int, repeats: int, churn_repeats: int) -> dict:
    with simulator(tasks) as url, tempfile.TemporaryDirectory() as tmp:
        env = kps_env(url, KPSBOT_DB=str(Path(tmp) / "bench.db"))
        floor_env = {**env, "KPS_AUTH_TOKEN": TOKEN}
        watch = [sys.executable, "-m", "kpsbot", "watch", "--once"]
        floor = [sys.executable, str(ROOT / "bench" / "floor_fetch.py")]
        baseline = measure(watch, env, cwd=tmp)
        if baseline.returncode:
            raise SystemExit("baseline cycle failed")
        same, floors, churn = [], [], []
        for _ in range(repeats):
            floors.append(measure(floor, floor_env, cwd=tmp))
            same.append(measure(watch, env, cwd=tmp))
        for _ in range(churn_repeats):
            sim_control(url, "churn", {"count": max(tasks // 10, 1)})
            churn.append(measure(watch, env, cwd=tmp))
    f, s, c = median_run(floors), median_run(same), median_run(churn)
    return {
        "tasks": tasks,
        "baseline": baseline.__dict__,
        "floor": f.__dict__,
        "no_change": s.__dict__,
        "churn_10pct": c.__dict__,
        "no_change_ratio": s.wall / f.wall,
        "churn_ratio": c.wall / f.wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass (CI)")
    args = parser.parse_args()
    # No-change cycles and the floor alternate 5 times (they are quick and the machine is noisy);
    # a 10% churn at 100,000 tasks looks up 10,000 task statuses, so it runs 3 times.
    sizes, repeats, churn_repeats = ([1_000], 1, 1) if args.quick else ([1_000, 10_000, 100_000], 5, 3)
    results = [run_size(n, repeats, churn_repeats) for n in sizes]
    rows = []
    for r in results:
        for label in ("floor", "no_change", "churn_10pct"):
            m = r[label]
            ratio = "1.00" if label == "floor" else f"{m['wall'] / r['floor']['wall']:.2f}"
            rows.append([f"{r['tasks']:,}", label, m["wall"], m["cpu"], m["peak_rss_mb"], ratio])
    print_table(
        "poll_cycle: kpsbot watch --once (whole process, median) vs GET + json.loads floor",
        ["tasks", "run", "wall s", "cpu s", "peak RSS MB", "x floor"],
        rows,
    )
    print("goal: no-change within 1.3x of the floor at 100,000 tasks; peak RSS under 150 MB")
    save("poll_cycle", results, quick=args.quick)


if __name__ == "__main__":
    main()
