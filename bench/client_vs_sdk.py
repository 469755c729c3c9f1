"""`kpsbot tasks --all --json` against a script using the official huaweicloudsdkkps client.

Whole processes against the same benchmark server (kps_server.py), alternating, in one run; both
sign with the same AK/SK. The two outputs must be the same bytes: a mismatch is reported and fails
the run. The fetch floor (GET + json.loads of every page, no output) runs beside them for scale.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
from pathlib import Path

from common import (
    FLOOR,
    HERE,
    KPSBOT,
    ROW_HEADER,
    KpsServer,
    alternate,
    kps_env,
    measure,
    print_table,
    ratio,
    row,
    save,
    summary,
    workdir,
)


def compare_outputs(ours: Path, sdk: Path) -> str | None:
    """None when the two outputs are the same bytes, else where they first differ."""
    if filecmp.cmp(ours, sdk, shallow=False):
        return None
    a, b = ours.read_bytes(), sdk.read_bytes()
    try:
        ja, jb = json.loads(a), json.loads(b)
    except ValueError as exc:
        return f"an output is not JSON: {exc}"
    if ja == jb:
        return f"same JSON, different bytes ({len(a)} vs {len(b)})"
    if ja.get("total") != jb.get("total"):
        return f"total {ja.get('total')} vs {jb.get('total')}"
    for n, (x, y) in enumerate(zip(ja["tasks"], jb["tasks"])):
        if x != y:
            return f"task {n}: kpsbot {x} vs SDK {y}"
    return f"{len(ja['tasks'])} vs {len(jb['tasks'])} tasks"


def run(tasks: int, repeats: int) -> dict:
    with KpsServer(tasks) as server, workdir() as tmp:
        env = kps_env(server, tmp / "absent.db")  # tasks reads IDs from a database only if one exists
        outputs = {"kpsbot": tmp / "kpsbot.json", "sdk": tmp / "sdk.json"}
        runs = alternate(
            {
                "kpsbot": lambda: measure(
                    [*KPSBOT, "tasks", "--all", "--json"], env, tmp, server, outputs["kpsbot"]
                ),
                "sdk": lambda: measure(
                    [sys.executable, str(HERE / "sdk_list_all.py")], env, tmp, server, outputs["sdk"]
                ),
                "floor": lambda: measure(FLOOR, env, tmp, server),
            },
            repeats,
        )
        mismatch = compare_outputs(outputs["kpsbot"], outputs["sdk"])
        digests = {r.stdout_sha256 for r in runs["kpsbot"] + runs["sdk"]}
        if mismatch is None and len(digests) != 1:
            mismatch = "outputs differ between runs"
    o, s, f = (summary(runs[k]) for k in ("kpsbot", "sdk", "floor"))
    return {
        "tasks": tasks,
        "repeats": repeats,
        "kpsbot": o,
        "official_sdk": s,
        "floor": f,
        "speedup": {"best": s["wall"] / o["wall"], "median": s["median_wall"] / o["median_wall"]},
        "memory_ratio": o["peak_rss_mb"] / s["peak_rss_mb"],
        "kpsbot_vs_floor": ratio(o, f),
        "same_output": mismatch is None,
        "mismatch": mismatch,
        "output_bytes": o["best"]["stdout_bytes"],
    }


def report(result: dict) -> None:
    n = f"{result['tasks']:,}"
    o, s, f = result["kpsbot"], result["official_sdk"], result["floor"]
    print_table(
        f"client_vs_sdk: list {n} running tasks as JSON (best of {result['repeats']}, alternating)",
        ROW_HEADER,
        [
            row(n, "floor: GET + json.loads", f, None),
            row(n, "kpsbot tasks --all --json", o, f),
            row(n, "huaweicloudsdkkps script", s, f),
        ],
    )
    speedup = result["speedup"]
    print(
        f"kpsbot is {speedup['best']:.2f}x the SDK's speed (median {speedup['median']:.2f}x; goal >= 2x) "
        f"with {result['memory_ratio']:.2f}x its peak RSS (goal <= 1x)"
    )
    if result["same_output"]:
        print(f"outputs: identical, {result['output_bytes']:,} bytes")
    else:
        print(
            f"\n*** OUTPUT MISMATCH between kpsbot and the SDK script: {result['mismatch']} ***\n",
            file=sys.stderr,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass (CI)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks to list (default 100,000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (default 5)")
    args = parser.parse_args()
    try:
        import huaweicloudsdkkps  # noqa: F401
    except ImportError:
        print("client_vs_sdk: skipped (pip install -e '.[bench]' for huaweicloudsdkkps)")
        return 0
    tasks, repeats = (2_000, 1) if args.quick else (100_000, 5)
    tasks, repeats = args.tasks or tasks, args.repeats or repeats
    result = run(tasks, repeats)
    report(result)
    save("client_vs_sdk", result, quick=args.quick)
    return 0 if result["same_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
