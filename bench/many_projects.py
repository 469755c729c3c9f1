"""Many projects behind one server: 20 projects x 5,000 running tasks, the no-change cycle.

A baseline `kpsbot watch --once` over every project first (not timed), its database kept; then,
alternating, the multi-project floor (`floor_fetch.py --threads 8`: the same pages of the 20
projects fetched and json.loads-ed on 8 threads, a requests session each) and one kpsbot cycle on a
fresh copy of the post-baseline database.
"""

from __future__ import annotations

import argparse
import sys

from common import ROW_HEADER, KpsServer, alternate, print_table, ratio, row, save, summary, workdir
from poll_cycle import Cycles


def run(projects: int, tasks: int, repeats: int) -> dict:
    with KpsServer(tasks, projects=projects) as server, workdir() as tmp:
        cycles = Cycles(server, tmp)
        runs = alternate(
            {"floor": cycles.floor("--threads", "8"), "kpsbot": cycles.watch(" 0 started, 0 finished")},
            repeats,
            before_each=cycles.restore,
        )
    f, k = summary(runs["floor"]), summary(runs["kpsbot"])
    return {
        "projects": projects,
        "tasks_per_project": tasks,
        "tasks": projects * tasks,
        "repeats": repeats,
        "floor": f,
        "kpsbot": k,
        "ratio": ratio(k, f),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5)")
    args = parser.parse_args()
    projects, tasks, repeats = (3, 500, 1) if args.quick else (20, 5_000, 5)
    result = run(projects, tasks, args.repeats or repeats)
    case = f"{projects} x {tasks:,}"
    print_table(
        f"many_projects: no-change kpsbot watch --once over {projects} projects vs the 8-thread floor",
        ROW_HEADER,
        [
            row(case, "multi-project floor", result["floor"], None),
            row(case, "kpsbot no change", result["kpsbot"], result["floor"]),
        ],
    )
    print("goal: <= 1.3x the multi-project floor; peak RSS <= 150 MB")
    save("many_projects", result, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
