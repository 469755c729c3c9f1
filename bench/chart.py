"""The chart of a run: cycle time and peak RSS against task count, kpsbot beside its floors.

    python bench/chart.py [--quick]

Reads bench/results/latest.json (quick.json) and writes bench/chart.png (for --quick,
bench/results/chart-quick.png, so a smoke pass never replaces the committed chart).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import HERE, RESULTS

# (label, colour, line style, marker): kpsbot solid, its floor dashed, one colour per case.
STYLE = {
    "kpsbot, no change": ("tab:blue", "-", "o"),
    "fetch floor": ("tab:blue", "--", "o"),
    "kpsbot, 10% churn": ("tab:red", "-", "s"),
    "churn floor": ("tab:red", "--", "s"),
    "kpsbot, 20 projects, no change": ("tab:green", "-", "D"),
    "multi-project floor (8 threads)": ("tab:green", "--", "D"),
    "kpsbot tasks --all --json": ("tab:purple", "-", "^"),
    "huaweicloudsdkkps script": ("tab:purple", ":", "v"),
}


def series(results: dict) -> dict[str, list[tuple[int, float, float]]]:
    """label -> [(tasks, best wall s, peak RSS MB)]."""
    out: dict[str, list[tuple[int, float, float]]] = {label: [] for label in STYLE}

    def add(label: str, tasks: int, s: dict) -> None:
        out[label].append((tasks, s["wall"], s["peak_rss_mb"]))

    cycles = results.get("poll_cycle", {})
    for r in cycles.get("no_change", []):
        add("kpsbot, no change", r["tasks"], r["kpsbot"])
        add("fetch floor", r["tasks"], r["floor"])
    for r in cycles.get("churn", []):
        add("kpsbot, 10% churn", r["tasks"], r["kpsbot"])
        add("churn floor", r["tasks"], r["floor"])
    many = results.get("many_projects")
    if many:
        add("kpsbot, 20 projects, no change", many["tasks"], many["kpsbot"])
        add("multi-project floor (8 threads)", many["tasks"], many["floor"])
    listing = results.get("client_vs_sdk")
    if listing:
        add("kpsbot tasks --all --json", listing["tasks"], listing["kpsbot"])
        add("huaweicloudsdkkps script", listing["tasks"], listing["official_sdk"])
    return {label: sorted(points) for label, points in out.items() if points}


def draw(results: dict, target: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(results)
    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    for label, points in lines.items():
        colour, style, marker = STYLE[label]
        many = label.startswith(("kpsbot, 20", "multi"))
        if many:  # the 20 projects are one point: label it with its shape
            n = results["many_projects"]
            label = label.replace("20 projects", f"{n['projects']} x {n['tasks_per_project']:,}")
        tasks = [p[0] for p in points]
        for ax, values in ((time_ax, [p[1] for p in points]), (rss_ax, [p[2] for p in points])):
            ax.plot(tasks, values, linestyle=style, marker=marker, color=colour, label=label, markersize=7)
    time_ax.axhline(30, color="grey", linewidth=0.8, linestyle=":")
    time_ax.annotate(
        "churn goal: 30 s", (0.02, 30), xycoords=("axes fraction", "data"), va="bottom", fontsize=8
    )
    rss_ax.axhline(150, color="grey", linewidth=0.8, linestyle=":")
    rss_ax.annotate(
        "RSS goal: 150 MB", (0.02, 150), xycoords=("axes fraction", "data"), va="bottom", fontsize=8
    )
    time_ax.set(xscale="log", yscale="log", xlabel="running tasks", ylabel="wall time, best run (s)")
    rss_ax.set(xscale="log", xlabel="running tasks", ylabel="peak RSS (MB)")
    time_ax.set_title("cycle (and listing) time")
    rss_ax.set_title("peak RSS")
    for ax in (time_ax, rss_ax):
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = time_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="chart quick.json into results/chart-quick.png")
    args = parser.parse_args()
    source = RESULTS / ("quick.json" if args.quick else "latest.json")
    if not source.exists():
        print(f"chart: no results in {source}; run the benchmarks first", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # CI installs '.[test]' only: the smoke pass must not fail for a chart
        print(f"chart: skipped, matplotlib cannot be imported ({exc}); pip install -e '.[bench]'")
        return 0
    results = json.loads(source.read_text())
    target = RESULTS / "chart-quick.png" if args.quick else HERE / "chart.png"
    kind = "quick smoke pass (small sizes)" if args.quick else "full run"
    title = f"kpsbot vs floors against kps_server.py on loopback, {kind}, {results.get('_updated', '')}"
    print(f"chart: {draw(results, target, title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
