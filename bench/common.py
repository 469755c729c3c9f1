"""Shared benchmark plumbing: a simulator subprocess, whole-process measurements, result tables."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROJECT = "bench0project"
AK, SK, TOKEN = "BENCHAK0000000000", "bench-secret-key-0000000000000000", "bench-token-0000"


def kps_env(url: str, **extra: str) -> dict[str, str]:
    """Environment for a kpsbot process talking to the benchmark simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK"))}
    env.update(
        KPS_ENDPOINT=url,
        KPS_PROJECT_ID=PROJECT,
        CLOUD_SDK_AK=AK,
        CLOUD_SDK_SK=SK,
        KPSBOT_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


@contextmanager
def simulator(tasks: int, rate: float = 0.0, delay: float | None = None):
    """`kpsbot simulate` as a subprocess; yields its base URL."""
    cmd = [
        sys.executable,
        "-m",
        "kpsbot",
        "simulate",
        "--port",
        "0",
        "--tasks",
        str(tasks),
        "--rate",
        str(rate),
        "--seed",
        "7",
        "--project-id",
        PROJECT,
        "--ak",
        AK,
        "--sk",
        SK,
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=kps_env("http://unused"),
        cwd=ROOT / "bench",
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            raise RuntimeError(f"simulator did not start: {line!r}")
        url = match.group(0)
        if delay is not None:
            import requests

            requests.post(f"{url}/_sim/faults", json={"delay": delay}, timeout=5).raise_for_status()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def sim_control(url: str, path: str, payload: dict) -> dict:
    import requests

    response = requests.post(f"{url}/_sim/{path}", json=payload, timeout=30)
    response.raise_for_status()
    return response.json()


@dataclass
class ProcessRun:
    wall: float
    cpu: float
    peak_rss_mb: float
    returncode: int
    stdout_bytes: int


def measure(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None) -> ProcessRun:
    """Run a whole process; wall time, user+sys CPU and peak RSS from wait4()."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
        size = out.seek(0, os.SEEK_END)
    # ru_maxrss is in KiB on Linux
    return ProcessRun(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code, size)


def median_run(runs: list[ProcessRun]) -> ProcessRun:
    return ProcessRun(
        wall=statistics.median(r.wall for r in runs),
        cpu=statistics.median(r.cpu for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        returncode=max(r.returncode for r in runs),
        stdout_bytes=runs[-1].stdout_bytes,
    )


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value)


def save(name: str, data, *, quick: bool = False) -> None:
    """Merge this benchmark's results into bench/results/latest.json (quick.json for --quick runs,
    so a smoke pass never overwrites the numbers of a full run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("quick.json" if quick else "latest.json")
    current = json.loads(path.read_text()) if path.exists() else {}
    current[name] = data
    current["_updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(current, indent=2, default=lambda o: asdict(o)))
