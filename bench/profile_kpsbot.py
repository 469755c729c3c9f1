"""Where kpsbot's time goes, against the benchmark server: a report, not a benchmark.

    python bench/profile_kpsbot.py [--tasks 100000] [--top 12] [--only tasks|watch|churn]

Samples with py-spy (every thread; only samples holding the GIL, i.e. Python's own CPU time) of
three whole processes: `kpsbot tasks --all --json`, a no-change `kpsbot watch --once` after a
baseline, and a 10% churn cycle. For each: the functions with the most self time and the most
inclusive ("cumulative") time, as shares of the samples. Without py-spy it falls back to cProfile,
which sees the main thread only. Then the wall time of each pipeline stage (phases.py) and the
start-up imports (`python -X importtime -m kpsbot --help`). Writes bench/results/profile.txt.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import HERE, KPSBOT, RESULTS, KpsServer, copy_db, kps_env, workdir

PY_SPY = shutil.which(
    "py-spy", path=f"{Path(sys.executable).parent}:{__import__('os').environ.get('PATH', '')}"
)
# Frames every sample passes through (thread start-up, click's dispatch, runpy): no information.
WRAPPERS = re.compile(
    r"^(<module>|_run_module|_run_code|main \(kpsbot/cli)|\((click/|stdlib/threading|concurrent/)"
)
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3", "/kpsbot/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            elif marker == "/kpsbot/":
                path = "kpsbot/" + path
            break
    return f"{match['func']} ({path})"


def spy(cmd: list[str], env: dict, cwd: Path, out: Path) -> tuple[Counter, Counter, int]:
    """(self samples, inclusive samples, total samples) of `cmd` by function, GIL-holding samples only."""
    raw = out.with_suffix(".raw")
    subprocess.run(
        [PY_SPY, "record", "--gil", "-r", "250", "-f", "raw", "-o", str(raw), "--", *cmd],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if not WRAPPERS.search(f)] or frames
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own, inclusive, total


def cprofile(cmd: list[str], env: dict, cwd: Path, out: Path) -> tuple[Counter, Counter, int]:
    import pstats

    prof = out.with_suffix(".prof")
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(prof), *cmd[1:]],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stats = pstats.Stats(str(prof)).stats
    own, inclusive = Counter(), Counter()
    for (file, _, func), (_, _, tt, ct, _) in stats.items():
        name = _short(f"{func} ({file})")
        own[name] += int(tt * 1e6)
        inclusive[name] = max(inclusive[name], int(ct * 1e6))
    return own, inclusive, max(inclusive.values(), default=1)


def table(title: str, counts: Counter, total: int, top: int) -> list[str]:
    lines = [title]
    for name, n in counts.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return lines


def import_times(env: dict, cwd: Path, top: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kpsbot", "--help"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match[2]), int(match[1]), len(match[3]) // 2, match[4]))
    total = max((r[0] for r in rows if r[2] == 0 and r[3] == "kpsbot.cli"), default=0)
    lines = [
        f"start-up imports of `kpsbot --help` (kpsbot.cli: {total / 1000:.0f} ms), largest cumulative first:"
    ]
    for cumulative, own, depth, name in sorted(rows, reverse=True)[:top]:
        lines.append(
            f"  {cumulative / 1000:7.1f} ms cumulative  {own / 1000:6.1f} ms self  {'  ' * depth}{name}"
        )
    return lines


def phases(args: list[str], env: dict, cwd: Path) -> list[str]:
    """phases.py's wall time per pipeline stage, largest first."""
    result = subprocess.run(
        [sys.executable, str(HERE / "phases.py"), *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    found = [line for line in result.stderr.splitlines() if line.startswith("phases: ")]
    if not found:
        return [f"  phases.py failed: {result.stderr[-500:]}"]
    stages = json.loads(found[-1][len("phases: ") :])
    return [
        f"  {entry['s']:8.3f} s  {name}" + (f" ({entry['calls']} calls)" if entry["calls"] > 1 else "")
        for name, entry in sorted(stages.items(), key=lambda item: -item[1]["s"])
    ]


CASES = {
    "tasks": ("tasks --all --json", ["tasks", "--all", "--json"]),
    "watch": ("watch --once, no change", ["watch", "--once"]),
    "churn": ("watch --once, 10% churn", ["watch", "--once"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--only", choices=tuple(CASES), default=None, help="one case")
    args = parser.parse_args()
    profile = spy if PY_SPY else cprofile
    how = "py-spy --gil, every thread" if profile is spy else "cProfile, main thread only"
    report = [f"kpsbot profile against kps_server.py, {args.tasks:,} tasks ({how})", ""]
    with KpsServer(args.tasks) as server, workdir() as tmp:
        env = kps_env(server, tmp / "kpsbot.db")
        db, baseline = tmp / "kpsbot.db", tmp / "baseline.db"
        subprocess.run([*KPSBOT, "watch", "--once"], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        copy_db(db, baseline)

        def prepare(key: str) -> None:
            """The state each case starts from: the post-baseline database; for churn, a fresh churn."""
            copy_db(baseline, db)
            if key == "churn":
                server.reset()
                server.churn(args.tasks // 10)

        for key, (name, command) in CASES.items():
            if args.only not in (None, key):
                continue
            prepare(key)
            own, inclusive, total = profile([*KPSBOT, *command], env, tmp, tmp / key)
            report.extend(table(f"{name}: self time", own, total, args.top))
            report.extend(table(f"{name}: inclusive time", inclusive, total, args.top))
            prepare(key)
            report.append(f"{name}: wall time by stage (phases.py; threaded stages overlap)")
            report.extend(phases(command, env, tmp))
            report.append("")
        report.extend(import_times(env, tmp, args.top))
    text = "\n".join(report) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile.txt").write_text(text)


if __name__ == "__main__":
    main()
