"""`kpsbot tasks --all --json` against a script using the official huaweicloudsdkkps client.

Both run as whole processes against the same simulator, alternating, in the same run.
"""

from __future__ import annotations

import argparse
import sys

from common import ROOT, TOKEN, kps_env, measure, median_run, print_table, save, simulator


def run(tasks: int, repeats: int) -> dict:
    with simulator(tasks) as url:
        env = kps_env(url)
        ours_cmd = [sys.executable, "-m", "kpsbot", "tasks", "--all", "--json"]
        sdk_cmd = [sys.executable, str(ROOT / "bench" / "sdk_list_all.py")]
        floor_cmd = [sys.executable, str(ROOT / "bench" / "floor_fetch.py")]
        ours, sdk, floor = [], [], []
        for _ in range(repeats):
            ours.append(measure(ours_cmd, env, cwd=ROOT / "bench"))
            sdk.append(measure(sdk_cmd, env, cwd=ROOT / "bench"))
            floor.append(measure(floor_cmd, {**env, "KPS_AUTH_TOKEN": TOKEN}, cwd=ROOT / "bench"))
        if any(r.returncode for r in ours + sdk + floor):
            raise SystemExit("a run failed; see stderr above")
    o, s, f = median_run(ours), median_run(sdk), median_run(floor)
    result = {
        "tasks": tasks,
        "repeats": repeats,
        "kpsbot": o.__dict__,
        "official_sdk": s.__dict__,
        "floor": f.__dict__,
        "kpsbot_vs_floor": o.wall / f.wall,
        "speedup": s.wall / o.wall,
    }
    print_table(
        f"client_vs_sdk: list {tasks:,} running tasks as JSON (median of {repeats})",
        ["client", "wall s", "cpu s", "peak RSS MB", "output bytes"],
        [
            ["kpsbot tasks --all --json", o.wall, o.cpu, o.peak_rss_mb, o.stdout_bytes],
            ["huaweicloudsdkkps script", s.wall, s.cpu, s.peak_rss_mb, s.stdout_bytes],
            ["floor: requests.get + json.loads", f.wall, f.cpu, f.peak_rss_mb, f.stdout_bytes],
        ],
    )
    print(
        f"kpsbot is {result['speedup']:.2f}x the speed of the official SDK (goal: >= 2x); "
        f"{result['kpsbot_vs_floor']:.2f}x the floor's time"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass (CI)")
    args = parser.parse_args()
    try:
        import huaweicloudsdkkps  # noqa: F401
    except ImportError:
        print("client_vs_sdk: skipped (pip install -e '.[bench]' for huaweicloudsdkkps)")
        return
    tasks, repeats = (2_000, 1) if args.quick else (100_000, 3)
    save("client_vs_sdk", run(tasks, repeats), quick=args.quick)


if __name__ == "__main__":
    main()
