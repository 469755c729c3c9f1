"""Shared benchmark plumbing: the benchmark KPS server as a subprocess, whole-process measurements (wall,
CPU and peak RSS from wait4, the server's CPU over the same span), alternating runs, tables, results."""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
RESULTS = HERE / "results"

# kpsbot runs from this checkout (PYTHONPATH), as `pip install .` would have left it: with its
# bytecode compiled. Without this, a checkout whose __pycache__ was never written (an editable
# install under PYTHONDONTWRITEBYTECODE, a fresh clone) compiles every kpsbot module in every
# measured process — 40 ms of each no-change cycle — while requests, click and the SDK come
# compiled from site-packages.
compileall.compile_dir(ROOT / "kpsbot", quiet=1)
AK, SK, TOKEN = "BENCHAK0000000000", "bench-secret-key-0000000000000000", "bench-token-0000"
PROJECT = "bench00project"  # the one project of the single-project cases


def bench_projects(count: int) -> list[tuple[str, str]]:
    """(name, id) of the benchmark's projects: one region's default project, or its sub-projects."""
    if count == 1:
        return [("cn-north-4", PROJECT)]
    return [(f"cn-north-4_b{n:02d}", f"bench{n:02d}project") for n in range(count)]


class KpsServer:
    """`bench/kps_server.py` as a subprocess (see its docstring), with its control calls."""

    def __init__(self, tasks: int, projects: int = 1, seed: str = "7") -> None:
        self.projects = bench_projects(projects)
        self._err = tempfile.TemporaryFile()
        cmd = [sys.executable, str(HERE / "kps_server.py"), "--tasks", str(tasks), "--seed", seed]
        cmd += ["--ak", AK, "--sk", SK, "--token", TOKEN]
        for name, project_id in self.projects:
            cmd += ["--project", f"{name}:{project_id}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            self.stop()
            self._err.seek(0)
            raise RuntimeError(f"kps_server did not start: {line!r} {self._err.read()[-2000:]!r}")
        self.url = match.group(0)

    def _call(self, method: str, path: str) -> object:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def cpu(self) -> float:
        """The server process's user + sys CPU seconds so far."""
        usage = self._call("GET", "/_bench/cpu")
        return usage["user"] + usage["sys"]

    def stats(self) -> dict:
        return self._call("GET", "/_bench/cpu")

    def churn(self, count: int) -> dict:
        """Finish `count` tasks in each project and start as many; the finished [project_id, task_id]."""
        return self._call("POST", f"/_bench/churn?count={count}")

    def reset(self) -> None:
        self._call("POST", "/_bench/reset")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> KpsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kps_env(server: KpsServer, db: str | Path, **extra: str) -> dict[str, str]:
    """Environment for kpsbot, the floors and the SDK script: the server's projects by name:id, AK/SK
    (kpsbot signs when both are set; the floors and the SDK sign with the same pair)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "HUAWEICLOUD"))
    }
    env.update(
        KPS_ENDPOINT=server.url,
        KPS_PROJECTS=",".join(f"{name}:{project_id}" for name, project_id in server.projects),
        CLOUD_SDK_AK=AK,
        CLOUD_SDK_SK=SK,
        KPSBOT_DB=str(db),
        KPSBOT_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


KPSBOT = [sys.executable, "-m", "kpsbot"]
FLOOR = [sys.executable, str(HERE / "floor_fetch.py")]


@dataclass
class ProcessRun:
    wall: float
    cpu: float
    peak_rss_mb: float
    returncode: int
    stdout_bytes: int
    stdout_sha256: str = ""
    server_cpu: float | None = None  # the KPS server's CPU seconds while this process ran

    @property
    def server_share(self) -> float | None:
        """The server's CPU over the run's wall time: 0.05 = it was busy 5% of one core."""
        return None if self.server_cpu is None else self.server_cpu / self.wall


def measure(
    cmd: list[str],
    env: dict[str, str],
    cwd: str | Path | None = None,
    server: KpsServer | None = None,
    stdout_path: Path | None = None,
) -> ProcessRun:
    """Run a whole process; wall time, user+sys CPU and peak RSS from wait4(), and the server's CPU
    over the same span. A failed run prints its stderr and raises."""
    # The child's stdout goes straight to a file: read into this process, a 28 MB listing would
    # raise the RSS that the next child inherits at fork and that ru_maxrss then reports.
    with (
        open(stdout_path, "w+b") if stdout_path else tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        before = server.cpu() if server else None
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        server_cpu = server.cpu() - before if server and before is not None else None
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
            raise SystemExit(f"{' '.join(cmd[1:])} exited {code}")
        out.seek(0)
        digest, size = hashlib.sha256(), 0
        while chunk := out.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    # ru_maxrss is in KiB on Linux
    return ProcessRun(
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        code,
        size,
        digest.hexdigest(),
        server_cpu,
    )


def alternate(
    commands: dict[str, Callable[[], ProcessRun]],
    repeats: int,
    before_each: Callable[[], None] | None = None,
) -> dict[str, list[ProcessRun]]:
    """Each labelled run `repeats` times, interleaved, the order reversed every other round so that
    neither side always runs right after the other; `before_each` runs before every round."""
    runs: dict[str, list[ProcessRun]] = {label: [] for label in commands}
    labels = list(commands)
    for n in range(repeats):
        if before_each is not None:
            before_each()
        for label in labels if n % 2 == 0 else labels[::-1]:
            runs[label].append(commands[label]())
    return runs


def summary(runs: list[ProcessRun]) -> dict:
    """Best of the runs (least wall time), medians, the largest peak RSS and the server's CPU share."""
    best = min(runs, key=lambda r: r.wall)
    shares = [r.server_share for r in runs if r.server_share is not None]
    return {
        "best": asdict(best),
        "wall": best.wall,
        "cpu": best.cpu,
        "median_wall": statistics.median(r.wall for r in runs),
        "median_cpu": statistics.median(r.cpu for r in runs),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs),
        "server_share": best.server_share,
        "server_share_max": max(shares) if shares else None,
        "server_cpu": best.server_cpu,
        "runs": [asdict(r) for r in runs],
    }


def ratio(ours: dict, floor: dict) -> dict:
    """Best over best, and median over median, of one run of the benchmark."""
    return {"best": ours["wall"] / floor["wall"], "median": ours["median_wall"] / floor["median_wall"]}


def row(case: str, label: str, s: dict, vs: dict | None) -> list:
    """A table row: best and median wall, CPU of the best run, peak RSS, server share, ratio."""
    share = f"{100 * s['server_share']:.1f}%" if s["server_share"] is not None else "-"
    x = "1.00" if vs is None else f"{s['wall'] / vs['wall']:.2f} ({s['median_wall'] / vs['median_wall']:.2f})"
    return [case, label, s["wall"], s["median_wall"], s["cpu"], s["peak_rss_mb"], share, x]


ROW_HEADER = ["case", "run", "best s", "median s", "cpu s", "peak RSS MB", "server CPU", "x floor (median)"]


@contextmanager
def workdir():
    """A temporary working directory: no `.env` of the checkout is read, no database left behind."""
    path = Path(tempfile.mkdtemp(prefix="kpsbench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy_db(source: Path, target: Path) -> None:
    """Copy a SQLite database with its WAL files (or remove a target's stale ones)."""
    for suffix in ("", "-wal", "-shm"):
        src, dst = Path(f"{source}{suffix}"), Path(f"{target}{suffix}")
        if src.exists():
            shutil.copyfile(src, dst)
        elif dst.exists():
            dst.unlink()


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, cells_row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells_row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value)


def parent_rss() -> dict:
    """This process's peak RSS: on Linux a child's ru_maxrss counts the memory it was forked with, so
    this must stay below every child's figure (it does: no child output is read into it)."""
    return {"_bench_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def save(name: str, data, *, quick: bool = False) -> Path:
    """Write this benchmark's results to bench/results/<name>.json (<name>-quick.json for --quick) and
    merge them into latest.json (quick.json), so a smoke pass never overwrites a full run's numbers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    own = RESULTS / (f"{name}-quick.json" if quick else f"{name}.json")
    own.write_text(json.dumps({"_updated": stamp, **parent_rss(), name: data}, indent=2, default=asdict))
    merged = RESULTS / ("quick.json" if quick else "latest.json")
    current = json.loads(merged.read_text()) if merged.exists() else {}
    current[name] = data
    current["_updated"] = stamp
    current.update(parent_rss())
    merged.write_text(json.dumps(current, indent=2, default=asdict))
    return own


@contextmanager
def simulator(tasks: int, rate: float = 0.0, delay: float | None = None):
    """`kpsbot simulate` as a subprocess (for ack_latency, which needs KPS to answer late); yields its URL."""
    cmd = [*KPSBOT, "simulate", "--port", "0", "--tasks", str(tasks), "--rate", str(rate), "--seed", "7"]
    cmd += ["--project-id", PROJECT, "--ak", AK, "--sk", SK, "--token", TOKEN]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=HERE
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            raise RuntimeError(f"simulator did not start: {line!r}")
        url = match.group(0)
        if delay is not None:
            request = urllib.request.Request(
                f"{url}/_sim/faults",
                data=json.dumps({"delay": delay}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            urllib.request.urlopen(request, timeout=5).close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
