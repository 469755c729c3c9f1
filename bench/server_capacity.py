"""How fast the benchmark server serves, against what the benchmarks ask of it.

A load generator on plain `http.client` keep-alive connections (threads, each request signed afresh
with AK/SK and made unique by an unused query parameter, so the server's verification cache never
answers for it) asks for 1,000-task pages of a 100,000-task project, then for task statuses. The
number that bounds the server is its CPU time per request (from `/_bench/cpu`): one core could serve
1 / that many requests a second. The load generator shares the 2 cores, so the requests a second it
reaches are a lower bound of what the server can do.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
from urllib.parse import urlsplit

from common import AK, PROJECT, SK, KpsServer, print_table, save
from signing import sign


def load(server: KpsServer, paths: list[str], threads: int, seconds: float) -> dict:
    host = urlsplit(server.url).netloc
    done, sizes = [0] * threads, [0] * threads
    deadline = time.perf_counter() + seconds
    sk = SK.encode()

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, timeout=30)
        rng = random.Random(n)
        while time.perf_counter() < deadline:
            path = f"{rng.choice(paths)}{'&' if '?' in paths[0] else '?'}nonce={n}-{done[n]}"
            conn.request("GET", path, headers=sign("GET", f"http://{host}{path}", PROJECT, AK, sk))
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"capacity: HTTP {response.status}: {body[:200]!r}")
            done[n] += 1
            sizes[n] += len(body)
        conn.close()

    before, count_before = server.cpu(), server.stats()["requests"]
    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - start
    cpu, served = server.cpu() - before, server.stats()["requests"] - count_before
    requests = sum(done)
    return {
        "threads": threads,
        "seconds": wall,
        "requests": requests,
        "served": served,
        "requests_per_s": requests / wall,
        "mb_per_s": sum(sizes) / wall / 1e6,
        "server_cpu_s": cpu,
        "server_share": cpu / wall,
        "server_cpu_per_request_us": 1e6 * cpu / max(requests, 1),
        "one_core_capacity_per_s": requests / cpu if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke pass (CI)")
    args = parser.parse_args()
    tasks, seconds = (2_000, 0.5) if args.quick else (100_000, 3.0)
    with KpsServer(tasks) as server:
        base = f"/v3/{PROJECT}"
        pages = [f"{base}/running-tasks?limit=1000&offset={o}" for o in range(0, tasks, 1000)]
        answer = server.churn(max(tasks // 10, 1))  # finished tasks: SUCCESS_* and FAILED_* statuses
        ids = [f"{base}/tasks/{task_id}" for _, task_id in answer["finished"]]
        results = {
            "tasks": tasks,
            "pages": load(server, pages, 4, seconds),
            "statuses": load(server, ids, 8, seconds),
        }
    print_table(
        f"server_capacity: kps_server.py under load ({tasks:,} tasks; load generator on the same 2 cores)",
        ["request", "threads", "req/s", "MB/s", "server CPU", "server µs/req", "1-core capacity req/s"],
        [
            [
                name,
                r["threads"],
                r["requests_per_s"],
                r["mb_per_s"],
                f"{100 * r['server_share']:.0f}%",
                r["server_cpu_per_request_us"],
                r["one_core_capacity_per_s"] or 0.0,
            ]
            for name, r in (("1,000-task page", results["pages"]), ("task status", results["statuses"]))
        ],
    )
    save("server_capacity", results, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
