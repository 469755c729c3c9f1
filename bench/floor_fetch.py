"""The floors: a plain process that GETs every running-tasks page of every project in KPS_PROJECTS
and `json.loads` each, nothing else; signed with AK/SK like kpsbot (see signing.py).

    python floor_fetch.py                     the fetch floor: one project after another, page after page
    python floor_fetch.py --threads 8         the multi-project floor: the projects on 8 threads,
                                              each thread with its own requests session
    python floor_fetch.py --statuses FILE     the churn floor: the fetch floor, then GET tasks/{id} of
                                              each `project_id task_id` line of FILE on 8 threads
                                              (requests sessions), json.loads of each answer

Prints one line: the tasks read (and the statuses). Exits 1 on any HTTP error.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from signing import projects_from_env, session_from_env

_local = threading.local()


def _session():
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = session_from_env()
    return session


def _get(url: str, project_id: str, params: dict | None = None):
    response = _session().get(url, params=params, headers={"X-Project-Id": project_id}, timeout=30)
    if response.status_code != 200:
        raise SystemExit(f"floor: HTTP {response.status_code} from {url}: {response.text[:200]}")
    return json.loads(response.content)


def fetch_project(project_id: str) -> int:
    url = f"{os.environ['KPS_ENDPOINT']}/v3/{project_id}/running-tasks"
    offset = 0
    while True:
        body = _get(url, project_id, {"limit": 1000, "offset": offset})
        offset += len(body["tasks"])
        if not body["tasks"] or offset >= body["total"]:
            return offset


def fetch_status(line: str) -> str:
    project_id, task_id = line.split()
    return _get(f"{os.environ['KPS_ENDPOINT']}/v3/{project_id}/tasks/{task_id}", project_id)["task_status"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="projects fetched at once")
    parser.add_argument("--statuses", default=None, help="a file of `project_id task_id` lines")
    args = parser.parse_args()
    ids = [project_id for _, project_id in projects_from_env()]
    if args.threads > 1:
        with ThreadPoolExecutor(args.threads) as pool:
            count = sum(pool.map(fetch_project, ids))
    else:
        count = sum(fetch_project(project_id) for project_id in ids)
    statuses = []
    if args.statuses:
        with open(args.statuses) as lines, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(fetch_status, [line for line in lines if line.strip()]))
    print(count, len(statuses))


if __name__ == "__main__":
    main()
