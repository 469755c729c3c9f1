"""`kpsbot watch --once` as a whole process against the benchmark server, next to its floors.

No-change cycle (1,000 / 10,000 / 100,000 tasks): a baseline cycle first (not timed), its database
kept; then, alternating, the fetch floor (`floor_fetch.py`: GET + json.loads of every page) and one
kpsbot cycle on a fresh copy of the post-baseline database, where nothing changed.

10% churn cycle (10,000 / 100,000 tasks): before each round the server is reset to its first state
and a tenth of the tasks finish (a fifth of those failed) while as many new ones start; the
post-baseline database is restored; then, alternating, the churn floor (`floor_fetch.py --statuses`:
the fetch floor, then GET tasks/{id} of each finished task on 8 threads) and one kpsbot cycle, which
must report exactly those starts and finishes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (
    FLOOR,
    KPSBOT,
    ROW_HEADER,
    KpsServer,
    alternate,
    copy_db,
    kps_env,
    measure,
    print_table,
    ratio,
    row,
    save,
    summary,
    workdir,
)

WATCH = [*KPSBOT, "watch", "--once"]


def last_line(path: Path) -> str:
    lines = path.read_text().strip().splitlines()
    return lines[-1] if lines else ""


class Cycles:
    """A server with `tasks` tasks in each of `projects` projects, a baseline database, and runs."""

    def __init__(self, server: KpsServer, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.db, self.base = tmp / "kpsbot.db", tmp / "baseline.db"
        self.env = kps_env(server, self.db)
        self.out = tmp / "watch.out"
        measure(WATCH, self.env, tmp, server, self.out)  # the baseline: not timed
        if "baseline" not in last_line(self.out):
            raise SystemExit(f"the first cycle was not a baseline: {last_line(self.out)}")
        copy_db(self.db, self.base)

    def restore(self) -> None:
        copy_db(self.base, self.db)

    def watch(self, expect: str):
        def run():
            result = measure(WATCH, self.env, self.tmp, self.server, self.out)
            if expect not in last_line(self.out):
                raise SystemExit(f"kpsbot's cycle did not see {expect!r}: {last_line(self.out)}")
            return result

        return run

    def floor(self, *options: str):
        return lambda: measure([*FLOOR, *options], self.env, self.tmp, self.server)


def no_change(tasks: int, repeats: int) -> dict:
    with KpsServer(tasks) as server, workdir() as tmp:
        cycles = Cycles(server, tmp)
        runs = alternate(
            {"floor": cycles.floor(), "kpsbot": cycles.watch(" 0 started, 0 finished")},
            repeats,
            before_each=cycles.restore,
        )
        summary_line = last_line(cycles.out)
    f, k = summary(runs["floor"]), summary(runs["kpsbot"])
    return {
        "tasks": tasks,
        "repeats": repeats,
        "floor": f,
        "kpsbot": k,
        "ratio": ratio(k, f),
        "kpsbot_says": summary_line,
    }


def churn(tasks: int, repeats: int) -> dict:
    count = max(tasks // 10, 1)
    with KpsServer(tasks) as server, workdir() as tmp:
        cycles = Cycles(server, tmp)
        ids = tmp / "finished.txt"
        failed = []

        def prepare() -> None:
            server.reset()
            answer = server.churn(count)
            failed.append(answer["failed"])
            ids.write_text("".join(f"{project_id} {task_id}\n" for project_id, task_id in answer["finished"]))
            cycles.restore()

        runs = alternate(
            {
                "floor": cycles.floor("--statuses", str(ids)),
                "kpsbot": cycles.watch(f" {count} started, {count} finished"),
            },
            repeats,
            before_each=prepare,
        )
        summary_line = last_line(cycles.out)
    f, k = summary(runs["floor"]), summary(runs["kpsbot"])
    return {
        "tasks": tasks,
        "finished": count,
        "started": count,
        "failed": failed[-1],
        "repeats": repeats,
        "floor": f,
        "kpsbot": k,
        "ratio": ratio(k, f),
        "kpsbot_says": summary_line,
    }


def report(results: dict) -> None:
    rows = []
    for r in results["no_change"]:
        n = f"{r['tasks']:,}"
        rows += [row(n, "fetch floor", r["floor"], None), row(n, "kpsbot no change", r["kpsbot"], r["floor"])]
    print_table(
        "poll_cycle: no-change kpsbot watch --once vs the fetch floor (whole processes, alternating)",
        ROW_HEADER,
        rows,
    )
    print("goal: <= 1.3x the floor at 10,000 and 100,000 tasks; peak RSS <= 150 MB")
    rows = []
    for r in results["churn"]:
        n = f"{r['tasks']:,} ({r['finished']:,} done)"
        rows += [row(n, "churn floor", r["floor"], None), row(n, "kpsbot 10% churn", r["kpsbot"], r["floor"])]
    print_table(
        "poll_cycle: 10% churn kpsbot watch --once vs the churn floor (fetch + 8-thread status GETs)",
        ROW_HEADER,
        rows,
    )
    print("goal: <= 1.3x the churn floor at 100,000 tasks, and inside 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of each case (default 5)")
    args = parser.parse_args()
    if args.quick:
        sizes, churn_sizes, repeats = [1_000], [1_000], 1
    else:
        sizes, churn_sizes, repeats = [1_000, 10_000, 100_000], [10_000, 100_000], 5
    repeats = args.repeats or repeats
    results = {
        "no_change": [no_change(n, repeats) for n in sizes],
        "churn": [churn(n, repeats) for n in churn_sizes],
    }
    report(results)
    save("poll_cycle", results, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
